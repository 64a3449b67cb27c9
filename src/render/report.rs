//! A small self-contained HTML report: the metrics table, the time each stage took, and good
//! and defective examples side by side with their heat maps and ground-truth outlines.

use crate::error::Result;
use crate::eval::metrics::Metrics;
use crate::eval::table::fmt_metric;
use crate::io::write_atomic;
use std::fmt::Write;
use std::path::Path;

/// One picture in the gallery: a path relative to the report, and its caption.
pub struct Example {
    pub file: String,
    pub caption: String,
    pub anomalous: bool,
}

pub struct CategoryReport {
    pub name: String,
    pub metrics: Metrics,
    /// (stage, seconds).
    pub timings: Vec<(String, f64)>,
    pub examples: Vec<Example>,
    /// Remarks such as "3 defect images have no mask: pixel metrics skipped them".
    pub notes: Vec<String>,
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
         img{{max-width:520px;border:1px solid #999}}.bad{{color:#b00}}.good{{color:#070}}</style></head><body>\
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
    html += "</table><p>Each example: the input, then the model's heat map with its predicted region outlined \
             in red and the ground truth in green.</p>";
    for c in categories {
        let _ = write!(html, "<h2 id=\"{n}\">{n}</h2>", n = escape(&c.name));
        for note in &c.notes {
            let _ = write!(html, "<p>{}</p>", escape(note));
        }
        for e in &c.examples {
            let class = if e.anomalous { "bad" } else { "good" };
            let _ = write!(
                html,
                "<figure><img src=\"{f}\" alt=\"{cap}\"><figcaption class=\"{class}\">{cap}</figcaption></figure>",
                f = escape(&e.file),
                cap = escape(&e.caption)
            );
        }
    }
    html += "</body></html>\n";
    write_atomic(path, html.as_bytes())
}
