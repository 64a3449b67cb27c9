//! A small self-contained HTML report: the metrics table, the time each stage took, per
//! category the score histogram, the image ROC and the PRO curve (inline SVG), and the examples
//! worth a look side by side with their heat maps and ground-truth outlines.

use super::examples::Gallery;
use super::plot::{curve_svg, histogram_svg, CurvePlot};
use crate::error::Result;
use crate::eval::histogram::ScoreHistogram;
use crate::eval::metrics::{Curves, Metrics, AUPRO_FPR_LIMIT};
use crate::eval::table::fmt_metric;
use crate::io::write_atomic;
use std::fmt::Write;
use std::path::Path;

/// One picture in a gallery: a path relative to the report, and its caption.
pub struct Example {
    pub file: String,
    pub caption: String,
    pub anomalous: bool,
    pub gallery: Gallery,
}

pub struct CategoryReport {
    pub name: String,
    pub metrics: Metrics,
    /// (stage, seconds).
    pub timings: Vec<(String, f64)>,
    pub examples: Vec<Example>,
    /// Remarks such as "3 defect images have no mask: pixel metrics skipped them".
    pub notes: Vec<String>,
    /// The curves behind the image AUROC and the AUPRO.
    pub curves: Curves,
    /// The test set's image scores by kind, around the image threshold (None without scores).
    pub histogram: Option<ScoreHistogram>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn write_report(path: &Path, title: &str, intro: &str, categories: &[CategoryReport]) -> Result<()> {
    let mut html = String::new();
    let stages: Vec<String> =
        categories.first().map(|c| c.timings.iter().map(|t| t.0.clone()).collect()).unwrap_or_default();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
         figure{{display:inline-block;margin:6px;vertical-align:top}}figcaption{{font-size:13px;max-width:520px}}\
         img{{max-width:520px;border:1px solid #999}}.bad{{color:#b00}}.good{{color:#070}}\
         .plots figure{{width:min-content}}@media print{{figure{{break-inside:avoid}}body{{margin:0}}}}</style></head><body>\
         <h1>{t}</h1><p>{i}</p><table><tr><th>Category</th><th>Image AUROC</th><th>Pixel AUROC</th>\
         <th>Image F1</th><th>Pixel F1</th><th>AUPRO</th>",
        t = escape(title),
        i = escape(intro)
    );
    for stage in &stages {
        let _ = write!(html, "<th>{} (s)</th>", escape(stage));
    }
    html += "</tr>";
    for c in categories {
        let m = &c.metrics;
        let _ = write!(html, "<tr><td><a href=\"#{n}\">{n}</a></td>", n = escape(&c.name));
        for v in [m.image_auroc, m.pixel_auroc, m.image_f1, m.pixel_f1, m.aupro] {
            let _ = write!(html, "<td>{}</td>", fmt_metric(v));
        }
        for (_, seconds) in &c.timings {
            let _ = write!(html, "<td>{seconds:.1}</td>");
        }
        html += "</tr>";
    }
    html += "</table><p>Per category: the image scores of good and defective test images with the image \
             threshold, the image ROC curve and the PRO curve up to FPR 0.3. Then examples, worst first: each \
             shows the input, then the model's heat map with its predicted region outlined in red and the \
             ground truth in green.</p>";
    for c in categories {
        let _ = write!(html, "<h2 id=\"{n}\">{n}</h2>", n = escape(&c.name));
        for note in &c.notes {
            let _ = write!(html, "<p>{}</p>", escape(note));
        }
        html += &plots(c);
        for gallery in Gallery::ALL {
            let shown: Vec<&Example> = c.examples.iter().filter(|e| e.gallery == gallery).collect();
            if shown.is_empty() {
                continue;
            }
            let _ = write!(html, "<h3>{}</h3>", gallery.heading());
            for e in shown {
                let class = if e.anomalous { "bad" } else { "good" };
                let _ = write!(
                    html,
                    "<figure><img src=\"{f}\" alt=\"{cap}\"><figcaption class=\"{class}\">{cap}</figcaption></figure>",
                    f = escape(&e.file),
                    cap = escape(&e.caption)
                );
            }
        }
    }
    html += "</body></html>\n";
    write_atomic(path, html.as_bytes())
}

/// The category's three plots side by side, or a line saying why one is missing.
fn plots(c: &CategoryReport) -> String {
    let figure = |svg: String, caption: &str| format!("<figure>{svg}<figcaption>{caption}</figcaption></figure>");
    let mut html = String::from("<div class=\"plots\">");
    match &c.histogram {
        Some(h) => {
            html += &figure(histogram_svg(h), "Image scores: good and defective test images, and the image threshold.")
        }
        None => html += "<p>No image scores to plot.</p>",
    }
    match (&c.curves.image_roc, c.metrics.image_auroc) {
        (Some(roc), Some(auroc)) => {
            // Where the image threshold puts the model on its ROC curve.
            let marker = c.histogram.as_ref().map(|h| {
                let (good, defective) = (h.good.iter().sum::<u32>(), h.defective.iter().sum::<u32>());
                let fpr = f64::from(h.false_alarms()) / f64::from(good.max(1));
                let tpr = 1.0 - f64::from(h.misses()) / f64::from(defective.max(1));
                (fpr, tpr, "threshold".to_string())
            });
            let plot = CurvePlot {
                description: "image ROC curve",
                x_label: "false positive rate (good images flagged)",
                y_label: "true positive rate (defects caught)",
                x_max: 1.0,
                area_label: format!("AUROC {auroc:.3}"),
                chance_line: true,
                marker,
            };
            html += &figure(curve_svg(roc, &plot), "Image ROC: recall against false alarms over every threshold.");
        }
        _ => html += "<p>No image ROC: the test set needs good and defective images.</p>",
    }
    match (&c.curves.pro, c.metrics.aupro) {
        (Some(pro), Some(aupro)) => {
            let plot = CurvePlot {
                description: "per-region overlap curve up to a false positive rate of 0.3",
                x_label: "false positive rate (normal pixels)",
                y_label: "per-region overlap",
                x_max: AUPRO_FPR_LIMIT,
                area_label: format!("AUPRO {aupro:.3}"),
                chance_line: false,
                marker: None,
            };
            let caption = format!(
                "PRO: the mean share of each defect region found, against the share of normal pixels flagged, up \
                 to {AUPRO_FPR_LIMIT}; AUPRO is its area divided by {AUPRO_FPR_LIMIT}."
            );
            html += &figure(curve_svg(pro, &plot), &caption);
        }
        _ => html += "<p>No PRO curve: it needs defect masks and normal pixels.</p>",
    }
    html + "</div>"
}
