//! A built-in 5x8 bitmap font for printable ASCII, so captions need no font
//! file or font-rendering dependency.
//!
//! Each glyph is drawn in a 5-wide, 8-tall cell: capitals and digits fill
//! rows 0..=6, and row 7 holds the descenders of `g j p q y , _`. Characters
//! advance by 6 pixels and a line is 8 tall, before scaling.

use image::{Rgb, RgbImage};

const GLYPH_W: u32 = 5;
const GLYPH_H: u32 = 8;
const ADVANCE: u32 = GLYPH_W + 1;

/// Glyphs for ' '..='~'. One u64 per glyph: byte k (most significant first)
/// is row k, and bit 4 of each byte is the leftmost column.
const GLYPHS: [u64; 95] = [
    0x00_00_00_00_00_00_00_00, // ' '
    0x04_04_04_04_04_00_04_00, // '!'
    0x0A_0A_0A_00_00_00_00_00, // '"'
    0x0A_0A_1F_0A_1F_0A_0A_00, // '#'
    0x04_0F_14_0E_05_1E_04_00, // '$'
    0x18_19_02_04_08_13_03_00, // '%'
    0x0C_12_14_08_15_12_0D_00, // '&'
    0x04_04_08_00_00_00_00_00, // "'"
    0x02_04_08_08_08_04_02_00, // '('
    0x08_04_02_02_02_04_08_00, // ')'
    0x00_04_15_0E_15_04_00_00, // '*'
    0x00_04_04_1F_04_04_00_00, // '+'
    0x00_00_00_00_00_0C_04_08, // ','
    0x00_00_00_1F_00_00_00_00, // '-'
    0x00_00_00_00_00_0C_0C_00, // '.'
    0x00_01_02_04_08_10_00_00, // '/'
    0x0E_11_13_15_19_11_0E_00, // '0'
    0x04_0C_04_04_04_04_0E_00, // '1'
    0x0E_11_01_02_04_08_1F_00, // '2'
    0x1F_02_04_02_01_11_0E_00, // '3'
    0x02_06_0A_12_1F_02_02_00, // '4'
    0x1F_10_1E_01_01_11_0E_00, // '5'
    0x06_08_10_1E_11_11_0E_00, // '6'
    0x1F_01_02_04_08_08_08_00, // '7'
    0x0E_11_11_0E_11_11_0E_00, // '8'
    0x0E_11_11_0F_01_02_0C_00, // '9'
    0x00_0C_0C_00_0C_0C_00_00, // ':'
    0x00_0C_0C_00_0C_04_08_00, // ';'
    0x02_04_08_10_08_04_02_00, // '<'
    0x00_00_1F_00_1F_00_00_00, // '='
    0x08_04_02_01_02_04_08_00, // '>'
    0x0E_11_01_02_04_00_04_00, // '?'
    0x0E_11_01_0D_15_15_0E_00, // '@'
    0x0E_11_11_1F_11_11_11_00, // 'A'
    0x1E_11_11_1E_11_11_1E_00, // 'B'
    0x0E_11_10_10_10_11_0E_00, // 'C'
    0x1C_12_11_11_11_12_1C_00, // 'D'
    0x1F_10_10_1E_10_10_1F_00, // 'E'
    0x1F_10_10_1E_10_10_10_00, // 'F'
    0x0E_11_10_17_11_11_0F_00, // 'G'
    0x11_11_11_1F_11_11_11_00, // 'H'
    0x0E_04_04_04_04_04_0E_00, // 'I'
    0x07_02_02_02_02_12_0C_00, // 'J'
    0x11_12_14_18_14_12_11_00, // 'K'
    0x10_10_10_10_10_10_1F_00, // 'L'
    0x11_1B_15_15_11_11_11_00, // 'M'
    0x11_11_19_15_13_11_11_00, // 'N'
    0x0E_11_11_11_11_11_0E_00, // 'O'
    0x1E_11_11_1E_10_10_10_00, // 'P'
    0x0E_11_11_11_15_12_0D_00, // 'Q'
    0x1E_11_11_1E_14_12_11_00, // 'R'
    0x0F_10_10_0E_01_01_1E_00, // 'S'
    0x1F_04_04_04_04_04_04_00, // 'T'
    0x11_11_11_11_11_11_0E_00, // 'U'
    0x11_11_11_11_11_0A_04_00, // 'V'
    0x11_11_11_15_15_15_0A_00, // 'W'
    0x11_11_0A_04_0A_11_11_00, // 'X'
    0x11_11_11_0A_04_04_04_00, // 'Y'
    0x1F_01_02_04_08_10_1F_00, // 'Z'
    0x0E_08_08_08_08_08_0E_00, // '['
    0x00_10_08_04_02_01_00_00, // '\\'
    0x0E_02_02_02_02_02_0E_00, // ']'
    0x04_0A_11_00_00_00_00_00, // '^'
    0x00_00_00_00_00_00_00_1F, // '_'
    0x08_04_02_00_00_00_00_00, // '`'
    0x00_00_0E_01_0F_11_0F_00, // 'a'
    0x10_10_16_19_11_11_1E_00, // 'b'
    0x00_00_0E_10_10_11_0E_00, // 'c'
    0x01_01_0D_13_11_11_0F_00, // 'd'
    0x00_00_0E_11_1F_10_0E_00, // 'e'
    0x06_09_08_1C_08_08_08_00, // 'f'
    0x00_00_0F_11_11_0F_01_0E, // 'g'
    0x10_10_16_19_11_11_11_00, // 'h'
    0x04_00_0C_04_04_04_0E_00, // 'i'
    0x02_00_06_02_02_02_12_0C, // 'j'
    0x10_10_12_14_18_14_12_00, // 'k'
    0x0C_04_04_04_04_04_0E_00, // 'l'
    0x00_00_1A_15_15_11_11_00, // 'm'
    0x00_00_16_19_11_11_11_00, // 'n'
    0x00_00_0E_11_11_11_0E_00, // 'o'
    0x00_00_1E_11_11_1E_10_10, // 'p'
    0x00_00_0F_11_11_0F_01_01, // 'q'
    0x00_00_16_19_10_10_10_00, // 'r'
    0x00_00_0F_10_0E_01_1E_00, // 's'
    0x08_08_1C_08_08_09_06_00, // 't'
    0x00_00_11_11_11_13_0D_00, // 'u'
    0x00_00_11_11_11_0A_04_00, // 'v'
    0x00_00_11_11_15_15_0A_00, // 'w'
    0x00_00_11_0A_04_0A_11_00, // 'x'
    0x00_00_11_11_11_0F_01_0E, // 'y'
    0x00_00_1F_02_04_08_1F_00, // 'z'
    0x03_04_04_08_04_04_03_00, // '{'
    0x04_04_04_04_04_04_04_00, // '|'
    0x18_04_04_02_04_04_18_00, // '}'
    0x00_00_08_15_02_00_00_00, // '~'
];

fn glyph(c: char) -> u64 {
    // Anything outside printable ASCII (accents, control characters) shows as '?'.
    let c = if (' '..='~').contains(&c) { c } else { '?' };
    GLYPHS[c as usize - ' ' as usize]
}

/// Width and height in pixels that [`draw_text`] covers for `text` at `scale`
/// (one line; no trailing gap after the last character).
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    let n = text.chars().count() as u32;
    (n.saturating_mul(ADVANCE).saturating_sub(1).saturating_mul(scale), GLYPH_H.saturating_mul(scale))
}

/// Draws one line of `text` with its top-left corner at (`x`, `y`), every
/// font pixel becoming a `scale` x `scale` square. Pixels that fall outside
/// the image are skipped, so text may run off any edge.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: [u8; 3]) {
    for (k, c) in text.chars().enumerate() {
        let left = u64::from(x) + k as u64 * u64::from(ADVANCE) * u64::from(scale);
        if left >= u64::from(img.width()) {
            break;
        }
        let bits = glyph(c);
        for row in 0..GLYPH_H {
            let line = (bits >> (8 * (GLYPH_H - 1 - row))) as u8;
            for col in 0..GLYPH_W {
                if line & (0x10 >> col) != 0 {
                    let px = left + u64::from(col) * u64::from(scale);
                    let py = u64::from(y) + u64::from(row) * u64::from(scale);
                    fill_rect(img, px, py, scale.into(), scale.into(), color);
                }
            }
        }
    }
}

/// Draws `text` on a filled `background` box with a margin of `scale`
/// pixels, so it stays readable on any picture. The box's top-left corner
/// is (`x`, `y`); returns the box's width and height (before clipping).
pub fn draw_text_boxed(
    img: &mut RgbImage,
    x: u32,
    y: u32,
    text: &str,
    scale: u32,
    color: [u8; 3],
    background: [u8; 3],
) -> (u32, u32) {
    let (tw, th) = text_size(text, scale);
    let margins = scale.saturating_mul(2);
    let (bw, bh) = (tw.saturating_add(margins), th.saturating_add(margins));
    fill_rect(img, x.into(), y.into(), bw.into(), bh.into(), background);
    draw_text(img, x.saturating_add(scale), y.saturating_add(scale), text, scale, color);
    (bw, bh)
}

/// Fills the part of the rectangle that lies inside the image. u64 keeps
/// far-off coordinates from overflowing.
fn fill_rect(img: &mut RgbImage, x: u64, y: u64, w: u64, h: u64, color: [u8; 3]) {
    let x_end = (x + w).min(img.width().into());
    let y_end = (y + h).min(img.height().into());
    for py in y..y_end {
        for px in x..x_end {
            img.put_pixel(px as u32, py as u32, Rgb(color));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHITE: [u8; 3] = [255; 3];

    /// The lit pixels of `img` that are not black.
    fn lit(img: &RgbImage) -> Vec<(u32, u32)> {
        img.enumerate_pixels().filter(|(_, _, p)| p.0 != [0; 3]).map(|(x, y, _)| (x, y)).collect()
    }

    #[test]
    fn text_stays_inside_its_box() {
        let mut img = RgbImage::new(60, 40);
        let (x, y, scale) = (3, 4, 2);
        draw_text(&mut img, x, y, "Ag%", scale, WHITE);
        let (w, h) = text_size("Ag%", scale);
        assert_eq!((w, h), ((3 * 6 - 1) * 2, 16));
        let lit = lit(&img);
        assert!(lit.len() > 50, "too few pixels drawn: {}", lit.len());
        assert!(lit.iter().all(|&(px, py)| (x..x + w).contains(&px) && (y..y + h).contains(&py)));
        // 'g' uses the descender row, so the box's last row is reached.
        assert!(lit.iter().any(|&(_, py)| py == y + h - 1));
    }

    #[test]
    fn glyph_shape_is_the_table() {
        let mut img = RgbImage::new(5, 8);
        draw_text(&mut img, 0, 0, "T", 1, WHITE);
        let mut expected: Vec<(u32, u32)> = (0..5).map(|x| (x, 0)).collect();
        expected.extend((1..7).map(|y| (2, y)));
        let mut got = lit(&img);
        got.sort_by_key(|&(x, y)| (y, x));
        expected.sort_by_key(|&(x, y)| (y, x));
        assert_eq!(got, expected);
    }

    #[test]
    fn every_printable_glyph_but_space_draws_something() {
        for c in '!'..='~' {
            let mut img = RgbImage::new(5, 8);
            draw_text(&mut img, 0, 0, &c.to_string(), 1, WHITE);
            assert!(!lit(&img).is_empty(), "{c:?} is blank");
        }
    }

    #[test]
    fn boxed_text_fills_background_and_clips() {
        let mut img = RgbImage::new(40, 20);
        let (bw, bh) = draw_text_boxed(&mut img, 1, 1, "OK", 1, WHITE, [9, 9, 9]);
        assert_eq!((bw, bh), (11 + 2, 8 + 2));
        assert_eq!(img.get_pixel(1, 1).0, [9, 9, 9]);
        assert_eq!(img.get_pixel(bw, bh).0, [9, 9, 9]);
        assert_eq!(img.get_pixel(bw + 1, bh + 1).0, [0; 3]);
        assert_eq!(img.get_pixel(2, 2).0, [9, 9, 9]); // 'O' leaves its corner blank
        assert_eq!(img.get_pixel(3, 2).0, WHITE);
        // Running off every edge of a tiny image must not panic.
        let mut tiny = RgbImage::new(3, 2);
        draw_text_boxed(&mut tiny, 1, 1, "ANOMALY 100%", 4, WHITE, [9, 9, 9]);
        draw_text(&mut tiny, u32::MAX, u32::MAX, "x", u32::MAX, WHITE);
        let mut empty = RgbImage::new(0, 0);
        draw_text_boxed(&mut empty, 0, 0, "x", 1, WHITE, [0; 3]);
    }
}
