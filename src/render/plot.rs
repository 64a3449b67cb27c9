//! The report's plots as inline SVG, written here so the report needs no JavaScript, no file
//! beside it and no network: the score histogram ([`histogram_svg`]) and a rising curve such
//! as the ROC or the PRO curve ([`curve_svg`]). Black axes, labelled ticks and two colours that
//! stay apart in grey (a filled bar and an outlined one), so a printout reads as the screen.
//! Machine-readable hooks for tests and scripts: the plot area is `<rect class="frame">`, a
//! curve is `<polyline class="curve">`, a bar is `<rect class="good|defective" data-count>`.

use crate::eval::curve::Curve;
use crate::eval::histogram::ScoreHistogram;
use std::fmt::Write;

const GOOD: &str = "#1f77b4";
const DEFECTIVE: &str = "#d95f02";
/// Room around the plot area for tick labels, axis labels and the legend, in px.
const MARGIN: Margin = Margin { left: 58.0, right: 18.0, top: 46.0, bottom: 46.0 };

struct Margin {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The plot area of an SVG of `width x height` px and the data ranges it shows.
struct Frame {
    width: f64,
    height: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        MARGIN.left + (x - self.x.0) / (self.x.1 - self.x.0) * self.inner_width()
    }

    fn py(&self, y: f64) -> f64 {
        MARGIN.top + (self.y.1 - y) / (self.y.1 - self.y.0) * self.inner_height()
    }

    fn inner_width(&self) -> f64 {
        self.width - MARGIN.left - MARGIN.right
    }

    fn inner_height(&self) -> f64 {
        self.height - MARGIN.top - MARGIN.bottom
    }

    /// `<svg>` up to the frame, ticks and axis labels; the caller adds the data and `</svg>`.
    fn open(&self, description: &str, x_label: &str, y_label: &str, integer_y: bool) -> String {
        let (w, h) = (self.width, self.height);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
             role=\"img\" aria-label=\"{d}\" font-family=\"sans-serif\" font-size=\"12\">\
             <rect class=\"frame\" x=\"{x:.2}\" y=\"{y:.2}\" width=\"{iw:.2}\" height=\"{ih:.2}\" fill=\"none\" \
             stroke=\"#000\"/>",
            d = escape(description),
            x = MARGIN.left,
            y = MARGIN.top,
            iw = self.inner_width(),
            ih = self.inner_height(),
        );
        let bottom = MARGIN.top + self.inner_height();
        let (xs, x_decimals) = ticks(self.x.0, self.x.1);
        for t in xs {
            let _ = write!(
                svg,
                "<line x1=\"{p:.2}\" x2=\"{p:.2}\" y1=\"{bottom:.2}\" y2=\"{b2:.2}\" stroke=\"#000\"/>\
                 <text x=\"{p:.2}\" y=\"{ty:.2}\" text-anchor=\"middle\">{t:.x_decimals$}</text>",
                p = self.px(t),
                b2 = bottom + 5.0,
                ty = bottom + 18.0,
            );
        }
        let (ys, y_decimals) = ticks(self.y.0, self.y.1);
        for t in ys.into_iter().filter(|t| !integer_y || t.fract() == 0.0) {
            let _ = write!(
                svg,
                "<line x1=\"{l2:.2}\" x2=\"{l:.2}\" y1=\"{p:.2}\" y2=\"{p:.2}\" stroke=\"#000\"/>\
                 <text x=\"{tx:.2}\" y=\"{ty:.2}\" text-anchor=\"end\">{t:.y_decimals$}</text>",
                l = MARGIN.left,
                l2 = MARGIN.left - 5.0,
                p = self.py(t),
                tx = MARGIN.left - 8.0,
                ty = self.py(t) + 4.0,
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{cx:.2}\" y=\"{xy:.2}\" text-anchor=\"middle\">{xl}</text>\
             <text transform=\"translate(14 {cy:.2}) rotate(-90)\" text-anchor=\"middle\">{yl}</text>",
            cx = MARGIN.left + self.inner_width() / 2.0,
            xy = self.height - 8.0,
            cy = MARGIN.top + self.inner_height() / 2.0,
            xl = escape(x_label),
            yl = escape(y_label),
        );
        svg
    }
}

/// About five ticks at 1, 2 or 5 times a power of ten inside [lo, hi], and the decimals their
/// labels need.
fn ticks(lo: f64, hi: f64) -> (Vec<f64>, usize) {
    let raw = (hi - lo).max(1e-12) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|&s| s >= raw * 0.999).unwrap_or(raw);
    let first = (lo / step).ceil();
    // + 0.0 turns -0.0 into 0.0, which prints without the sign.
    let values =
        (0..).map(|k| (first + k as f64) * step + 0.0).take_while(|&t| t <= hi + step * 1e-9).take(50).collect();
    (values, (-step.log10().floor()).max(0.0) as usize)
}

/// Good and defective image scores overlaid, the threshold as a dashed vertical line, and the
/// count of each kind on its wrong side in the legend.
pub fn histogram_svg(h: &ScoreHistogram) -> String {
    let tallest = h.good.iter().chain(&h.defective).copied().max().unwrap_or(0).max(1);
    let frame = Frame { width: 460.0, height: 310.0, x: (h.edge(0), h.edge(h.bins())), y: (0.0, f64::from(tallest)) };
    let (good, defective): (u32, u32) = (h.good.iter().sum(), h.defective.iter().sum());
    let mut svg = frame.open(
        "histogram of image scores, good and defective, with the threshold",
        "image score (nearest-neighbour feature distance)",
        "images per bin",
        true,
    );
    for (kind, counts, colour, style) in [
        ("good", &h.good, GOOD, "fill-opacity=\"0.6\""),
        ("defective", &h.defective, DEFECTIVE, "fill-opacity=\"0.45\" stroke=\"#8c3c00\" stroke-width=\"1.2\""),
    ] {
        for (i, &n) in counts.iter().enumerate().filter(|(_, &n)| n > 0) {
            let (x0, x1, top) = (frame.px(h.edge(i)), frame.px(h.edge(i + 1)), frame.py(f64::from(n)));
            let _ = write!(
                svg,
                "<rect class=\"{kind}\" data-count=\"{n}\" x=\"{x0:.2}\" y=\"{top:.2}\" width=\"{w:.2}\" \
                 height=\"{ht:.2}\" fill=\"{colour}\" {style}><title>{n} {kind}, score {a:.4} to {b:.4}</title></rect>",
                w = x1 - x0,
                ht = frame.py(0.0) - top,
                a = h.edge(i),
                b = h.edge(i + 1),
            );
        }
    }
    let x = frame.px(f64::from(h.threshold));
    // The label reads from the line into the plot, so it never runs off either side.
    let anchor = if x < MARGIN.left + frame.inner_width() * 0.6 { "start" } else { "end" };
    let _ = write!(
        svg,
        "<line class=\"threshold\" x1=\"{x:.2}\" x2=\"{x:.2}\" y1=\"{t:.2}\" y2=\"{b:.2}\" stroke=\"#000\" \
         stroke-width=\"2\" stroke-dasharray=\"6 3\"/><text x=\"{x:.2}\" y=\"{ty:.2}\" text-anchor=\"{anchor}\">\
         threshold {th:.3}</text>",
        t = MARGIN.top - 4.0,
        b = frame.py(0.0),
        ty = MARGIN.top - 6.0,
        th = h.threshold,
    );
    for (row, (colour, style, text)) in [
        (
            GOOD,
            "fill-opacity=\"0.6\"",
            format!("good: {good}, {} above the threshold (false alarms)", h.false_alarms()),
        ),
        (
            DEFECTIVE,
            "fill-opacity=\"0.45\" stroke=\"#8c3c00\"",
            format!("defective: {defective}, {} at or below it (missed)", h.misses()),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let y = 2.0 + row as f64 * 14.0;
        let _ = write!(
            svg,
            "<rect x=\"{l:.2}\" y=\"{y:.2}\" width=\"10\" height=\"10\" fill=\"{colour}\" {style}/>\
             <text x=\"{tx:.2}\" y=\"{ty:.2}\">{text}</text>",
            l = MARGIN.left,
            tx = MARGIN.left + 15.0,
            ty = y + 9.5,
        );
    }
    svg + "</svg>"
}

/// What a curve plot shows besides the curve.
pub struct CurvePlot<'a> {
    pub description: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// The x range is [0, x_max]; y is [0, 1].
    pub x_max: f64,
    /// Text in the lower right, e.g. "AUROC 0.987".
    pub area_label: String,
    /// Draw y = x, what a score that knows nothing would give (the ROC's chance line).
    pub chance_line: bool,
    /// A marked point and its label, e.g. where the image threshold puts the ROC.
    pub marker: Option<(f64, f64, String)>,
}

/// A rising curve through `curve`'s points (cut at `x_max`, where the PRO curve ends).
pub fn curve_svg(curve: &Curve, plot: &CurvePlot) -> String {
    let frame = Frame { width: 300.0, height: 310.0, x: (0.0, plot.x_max), y: (0.0, 1.0) };
    let mut svg = frame.open(plot.description, plot.x_label, plot.y_label, false);
    if plot.chance_line {
        let _ = write!(
            svg,
            "<line class=\"chance\" x1=\"{:.2}\" y1=\"{:.2}\" x2=\"{:.2}\" y2=\"{:.2}\" stroke=\"#888\" \
             stroke-dasharray=\"2 3\"/>",
            frame.px(0.0),
            frame.py(0.0),
            frame.px(plot.x_max),
            frame.py(plot.x_max.min(1.0)),
        );
    }
    svg += "<polyline class=\"curve\" fill=\"none\" stroke=\"#000\" stroke-width=\"2\" points=\"";
    for (&x, &y) in curve.x.iter().zip(&curve.y).filter(|(&x, _)| x <= plot.x_max) {
        let _ = write!(svg, "{:.2},{:.2} ", frame.px(x), frame.py(y));
    }
    svg.pop();
    svg += "\"/>";
    if let Some((x, y, label)) = &plot.marker {
        let (px, py) = (frame.px(*x), frame.py(*y));
        // The label goes below-right of the point, or above-left near the right edge.
        let (dx, anchor) = if *x < plot.x_max * 0.6 { (8.0, "start") } else { (-8.0, "end") };
        let _ = write!(
            svg,
            "<circle class=\"marker\" cx=\"{px:.2}\" cy=\"{py:.2}\" r=\"5\" fill=\"{DEFECTIVE}\" stroke=\"#000\"/>\
             <text x=\"{tx:.2}\" y=\"{ty:.2}\" text-anchor=\"{anchor}\">{l}</text>",
            tx = px + dx,
            ty = py + 16.0,
            l = escape(label),
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{x:.2}\" y=\"{y:.2}\" text-anchor=\"end\" font-size=\"14\" font-weight=\"bold\">{a}</text></svg>",
        x = MARGIN.left + frame.inner_width() - 8.0,
        y = MARGIN.top + frame.inner_height() - 10.0,
        a = escape(&plot.area_label),
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        let (t, decimals) = ticks(0.0, 1.0);
        let labels: Vec<String> = t.iter().map(|v| format!("{v:.decimals$}")).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let (t, decimals) = ticks(0.83, 3.41);
        assert_eq!((t.first().copied(), t.last().copied(), decimals), (Some(1.0), Some(3.0), 0));
        assert_eq!(ticks(-0.3, 0.3).0.iter().filter(|v| v.to_string() == "-0").count(), 0);
    }
}
