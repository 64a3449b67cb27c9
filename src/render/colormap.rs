//! OpenCV's `COLORMAP_JET`, value for value.
//!
//! OpenCV samples Octave's 256-entry jet table (every channel piecewise
//! linear with slope 4/255 per step) and rounds `255 * table[i]` to u8.
//! [`JET`] rebuilds that table at compile time in integer arithmetic
//! instead of carrying 768 literals. All 256 entries were compared against
//! `cv2.applyColorMap` of OpenCV 4.14 and 5.0 (identical); the tests pin the
//! breakpoints.

/// Heat colour of `v` as RGB, identical to `cv2.applyColorMap(v, COLORMAP_JET)`
/// after its BGR output is turned into RGB.
pub fn jet(v: u8) -> [u8; 3] {
    JET[v as usize]
}

/// The 256 jet colours, RGB, indexed by heat value.
pub const JET: [[u8; 3]; 256] = build_jet();

const fn build_jet() -> [[u8; 3]; 256] {
    // Per channel, twice the 0..255 value is clamp(min(8i + rise, fall - 8i), 0, 510):
    // doubling keeps the table's exact .5 steps in integers.
    const LINES: [(i32, i32); 3] = [(-765, 2295), (-255, 1785), (255, 1275)];
    let mut table = [[0u8; 3]; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = 0;
        while c < 3 {
            let (rise, fall) = LINES[c];
            let up = 8 * i as i32 + rise;
            let down = fall - 8 * i as i32;
            let twice = if up < down { up } else { down };
            let twice = if twice < 0 {
                0
            } else if twice > 510 {
                510
            } else {
                twice
            };
            // cvRound rounds halves to even.
            let half = twice / 2;
            table[i][c] = (half + (twice & half & 1)) as u8;
            c += 1;
        }
        i += 1;
    }
    // Blue at 159 is exactly 1.5, but OpenCV interpolates and scales its
    // table in f32 and lands just below, so it rounds to 1. (Red at 96, the
    // mirror entry, lands on 1.5 or above and rounds to 2 as computed here.)
    table[159][2] = 1;
    table
}

#[cfg(test)]
mod tests {
    use super::jet;

    #[test]
    fn matches_opencv_at_every_breakpoint() {
        // From cv2.applyColorMap(np.arange(256, dtype=np.uint8), cv2.COLORMAP_JET), as RGB.
        let opencv: [(u8, [u8; 3]); 15] = [
            (0, [0, 0, 128]),
            (1, [0, 0, 132]),
            (31, [0, 0, 252]),
            (32, [0, 0, 255]),
            (33, [0, 4, 255]),
            (95, [0, 252, 255]),
            (96, [2, 255, 254]),
            (127, [126, 255, 130]),
            (128, [130, 255, 126]),
            (159, [254, 255, 1]),
            (160, [255, 252, 0]),
            (223, [255, 0, 0]),
            (224, [252, 0, 0]),
            (254, [132, 0, 0]),
            (255, [128, 0, 0]),
        ];
        for (v, rgb) in opencv {
            assert_eq!(jet(v), rgb, "jet({v})");
        }
    }
}
