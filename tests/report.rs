//! The evaluation report of a small generated category, read back as a person or a script
//! would: its plots are well-formed SVG whose bars and curve agree with the metrics, metrics.json
//! carries the curve points, the terminal shows the histogram, and the examples are the worst
//! cases, not the first files.

mod common;

use common::{patchcore, s, stderr, TempDir};
use patchcore::data::synth::{generate, SynthOptions};
use std::path::Path;

/// Checks that `text` is well-formed XML as this crate writes it (elements, quoted attributes,
/// the five predefined entities; no comments, CDATA or processing instructions): every tag
/// closes in order, no raw `<` or `&` in text or attributes. Returns the error, if any.
fn xml_error(text: &str) -> Option<String> {
    let entity_ok = |rest: &str| ["amp;", "lt;", "gt;", "quot;", "apos;"].iter().any(|e| rest.starts_with(e));
    let mut open: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(lt) = rest.find('<') {
        let content = &rest[..lt];
        if let Some(amp) = content.find('&') {
            if !entity_ok(&content[amp + 1..]) {
                return Some(format!("bad entity in text near {:?}", &content[amp..]));
            }
        }
        let Some(gt) = rest[lt..].find('>') else { return Some("unclosed tag".into()) };
        let tag = &rest[lt + 1..lt + gt];
        rest = &rest[lt + gt + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            match open.pop() {
                Some(top) if top == name.trim() => continue,
                top => return Some(format!("</{name}> closes {top:?}")),
            }
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
        let name = &body[..name_end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':') {
            return Some(format!("bad element name in <{tag}>"));
        }
        // Attributes: name="value" pairs, values without < or a bare &.
        let mut attrs = body[name_end..].trim();
        while !attrs.is_empty() {
            let Some((attr, after)) = attrs.split_once("=\"") else { return Some(format!("bad attribute in <{tag}>")) };
            if attr.trim().is_empty() || attr.trim().contains(char::is_whitespace) {
                return Some(format!("bad attribute name in <{tag}>"));
            }
            let Some(end) = after.find('"') else { return Some(format!("unquoted attribute in <{tag}>")) };
            let value = &after[..end];
            if value.contains('<') || value.match_indices('&').any(|(i, _)| !entity_ok(&value[i + 1..])) {
                return Some(format!("bad attribute value {value:?}"));
            }
            attrs = after[end + 1..].trim_start();
        }
        if !self_closing {
            open.push(name.to_string());
        }
    }
    (!open.is_empty()).then(|| format!("unclosed elements {open:?}"))
}

/// Every `<svg ...>...</svg>` of the page.
fn svgs(html: &str) -> Vec<&str> {
    html.match_indices("<svg").map(|(i, _)| &html[i..i + html[i..].find("</svg>").unwrap() + "</svg>".len()]).collect()
}

/// The value of `name="..."` in the first tag of `tag_text`.
fn attr<'a>(tag_text: &'a str, name: &str) -> Option<&'a str> {
    let tag = &tag_text[..tag_text.find('>')?];
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[at..at + tag[at..].find('"')?])
}

fn number(tag_text: &str, name: &str) -> f64 {
    attr(tag_text, name).unwrap_or_else(|| panic!("no {name} in {tag_text:.80}")).parse().unwrap()
}

/// The tags that start with `start` (e.g. `<rect class="good"`), each to the end of the page.
fn tags<'a>(svg: &'a str, start: &str) -> Vec<&'a str> {
    svg.match_indices(start).map(|(i, _)| &svg[i..]).collect()
}

/// The area under the polyline of a curve plot, in the data units of its frame (x from 0 to 1
/// across the frame's width, y from 0 to 1 up its height).
fn area_under_curve(svg: &str) -> f64 {
    let frame = tags(svg, "<rect class=\"frame\"")[0];
    let (x0, y0, w, h) = (number(frame, "x"), number(frame, "y"), number(frame, "width"), number(frame, "height"));
    let curve = tags(svg, "<polyline class=\"curve\"")[0];
    let points: Vec<(f64, f64)> = attr(curve, "points")
        .unwrap()
        .split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            ((x.parse::<f64>().unwrap() - x0) / w, (y0 + h - y.parse::<f64>().unwrap()) / h)
        })
        .collect();
    points.windows(2).map(|p| (p[1].0 - p[0].0) * (p[1].1 + p[0].1) / 2.0).sum()
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn the_report_plots_agree_with_the_metrics_and_show_the_worst_cases() {
    let dir = TempDir::new("report");
    let synth = SynthOptions { size: 64, train: 8, test_good: 8, test_per_defect: 3, seed: 11 };
    let summary = generate(dir.path(), "grain", &synth).unwrap();
    let data = summary.root;
    let model = dir.path().join("model.safetensors");
    let fit = patchcore(&[
        "fit",
        "--train",
        s(&data.join("train/good")),
        "--val",
        s(&data.join("test")),
        "--out",
        s(&model),
        "--size",
        "64",
        "--ratio",
        "0.5",
    ]);
    assert!(fit.status.success(), "{}", stderr(&fit));
    let out = dir.path().join("eval");
    let eval = patchcore(&["eval", "--model", s(&model), "--data", s(&data), "--out", s(&out), "--examples", "2"]);
    assert!(eval.status.success(), "{}", stderr(&eval));

    let good = files_in(&data.join("test/good"));
    let defective: usize = summary.defects.iter().map(|(_, n)| n).sum();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let plots = svgs(&html);
    assert_eq!(plots.len(), 3, "histogram, ROC and PRO");
    for svg in &plots {
        assert_eq!(xml_error(svg), None, "{svg:.300}");
    }

    // The histogram: every image in one bar of its kind; the wrong-side counts in the legend
    // are the bars on the wrong side of the threshold line.
    let histogram = plots.iter().find(|p| p.contains("histogram of image scores")).unwrap();
    let bars =
        |kind: &str| tags(histogram, &format!("<rect class=\"{kind}\"")).into_iter().map(|t| number(t, "data-count"));
    assert_eq!(bars("good").sum::<f64>() as usize, good);
    assert_eq!(bars("defective").sum::<f64>() as usize, defective);
    let line = number(tags(histogram, "<line class=\"threshold\"")[0], "x1");
    let right_of_line = |kind: &str| -> f64 {
        tags(histogram, &format!("<rect class=\"{kind}\""))
            .into_iter()
            .filter(|t| number(t, "x") >= line - 0.01)
            .map(|t| number(t, "data-count"))
            .sum()
    };
    let stats = &json["plots"]["score_histogram"];
    assert_eq!(right_of_line("good"), stats["false_alarms"].as_f64().unwrap());
    assert_eq!(defective as f64 - right_of_line("defective"), stats["misses"].as_f64().unwrap());
    assert!(histogram.contains(&format!("good: {good}, {} above the threshold", stats["false_alarms"])));

    // The ROC curve drawn is the one whose area was reported; metrics.json has the same points.
    let auroc = json["metrics"]["image_auroc"].as_f64().unwrap();
    let roc = plots.iter().find(|p| p.contains("image ROC curve")).unwrap();
    let drawn = area_under_curve(roc);
    assert!((drawn - auroc).abs() <= 0.01, "area under the drawn ROC {drawn} vs AUROC {auroc}");
    let roc_json = &json["plots"]["image_roc"];
    let column =
        |name: &str| -> Vec<f64> { roc_json[name].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    let (fpr, tpr) = (column("fpr"), column("tpr"));
    let json_area: f64 = (1..fpr.len()).map(|i| (fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2.0).sum();
    assert!((json_area - auroc).abs() < 1e-9, "metrics.json ROC area {json_area} vs AUROC {auroc}");
    assert_eq!(roc_json["thinned"], false);
    let pro = plots.iter().find(|p| p.contains("per-region overlap curve")).unwrap();
    let aupro = json["metrics"]["aupro"].as_f64().unwrap();
    // The drawn PRO area is over [0, 0.3] in data units; the frame spans 0.3, so the area in
    // frame units is AUPRO itself.
    assert!((area_under_curve(pro) - aupro).abs() <= 0.01, "drawn PRO {} vs AUPRO {aupro}", area_under_curve(pro));

    // The terminal: the same histogram as two rows of blocks split by the threshold.
    let text = String::from_utf8_lossy(&eval.stdout);
    let row = text.lines().find(|l| l.trim_start().starts_with("good ")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.contains('|')
            && row.ends_with(&format!("{good}, {} above the threshold (false alarms)", stats["false_alarms"])),
        "{text}"
    );

    // The two examples allowed are the highest-scoring good image and the lowest-scoring defect,
    // found here from `predict`'s scores of every test image.
    let test = data.join("test");
    let folders: Vec<String> =
        std::fs::read_dir(&test).unwrap().map(|e| e.unwrap().path().to_string_lossy().into_owned()).collect();
    let mut args = vec!["predict", "--model", s(&model)];
    args.extend(folders.iter().map(String::as_str));
    let predicted = patchcore(&args);
    assert!(predicted.status.success(), "{}", stderr(&predicted));
    let scored: Vec<(String, f64)> = String::from_utf8_lossy(&predicted.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            let path = Path::new(v["path"].as_str().unwrap()).to_path_buf();
            let shown = format!(
                "{}/{}",
                path.parent().unwrap().file_name().unwrap().to_string_lossy(),
                path.file_stem().unwrap().to_string_lossy()
            );
            (shown, v["score"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(scored.len(), good + defective);
    let by_score = |a: &&(String, f64), b: &&(String, f64)| a.1.total_cmp(&b.1);
    let highest_good = scored.iter().filter(|(p, _)| p.starts_with("good/")).max_by(by_score).unwrap();
    let lowest_defect = scored.iter().filter(|(p, _)| !p.starts_with("good/")).min_by(by_score).unwrap();
    let shown: Vec<&str> = html.match_indices("<img src=\"").map(|(i, m)| &html[i + m.len()..]).collect();
    assert_eq!(shown.len(), 2, "--examples 2");
    for (name, _) in [highest_good, lowest_defect] {
        assert!(shown.iter().any(|s| s.starts_with(&format!("grain/{name}.png"))), "{name} not among the examples");
    }
    assert!(html.contains(&format!("{} test images ({good} good, {defective} defective)", good + defective)));
}

#[test]
fn the_xml_check_rejects_what_a_browser_would_not_parse_as_svg() {
    assert_eq!(xml_error("<svg a=\"1\"><g><rect x=\"0\"/></g><text>a &amp; b</text></svg>"), None);
    for bad in ["<svg><g></svg>", "<svg a=1></svg>", "<svg>a & b</svg>", "<svg><rect></svg>", "<svg x=\"<\"/>"] {
        assert!(xml_error(bad).is_some(), "{bad}");
    }
}
