//! Metric tables as Markdown and CSV: one row per category, and the seed's benchmark layout
//! (one table per metric, a column per category and the average).

use super::metrics::Metrics;

/// Three decimals, or "n/a" for an undefined metric.
pub fn fmt_metric(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.3}"))
}

type Column = (&'static str, fn(&Metrics) -> Option<f64>);

const COLUMNS: [Column; 5] = [
    ("Image AUROC", |m| m.image_auroc),
    ("Pixel AUROC", |m| m.pixel_auroc),
    ("Image F1", |m| m.image_f1),
    ("Pixel F1", |m| m.pixel_f1),
    ("AUPRO", |m| m.aupro),
];

/// The mean of the defined values, None when there is none.
fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let defined: Vec<f64> = values.flatten().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

/// | category | Image AUROC | Pixel AUROC | Image F1 | Pixel F1 | AUPRO | (+ `extra` columns)
pub fn metrics_table(rows: &[(String, Metrics)], extra: &[(&str, Vec<String>)]) -> String {
    let mut out = String::from("| Category |");
    for (name, _) in COLUMNS {
        out += &format!(" {name} |");
    }
    for (name, _) in extra {
        out += &format!(" {name} |");
    }
    out += "\n|---|";
    out += &"---:|".repeat(COLUMNS.len() + extra.len());
    out += "\n";
    for (i, (category, m)) in rows.iter().enumerate() {
        out += &format!("| {category} |");
        for (_, get) in COLUMNS {
            out += &format!(" {} |", fmt_metric(get(m)));
        }
        for (_, values) in extra {
            out += &format!(" {} |", values.get(i).map_or("", String::as_str));
        }
        out += "\n";
    }
    if rows.len() > 1 {
        out += "| **Average** |";
        for (_, get) in COLUMNS {
            out += &format!(" {} |", fmt_metric(mean(rows.iter().map(|(_, m)| get(m)))));
        }
        out += &" |".repeat(extra.len());
        out += "\n";
    }
    out
}

/// The seed's tables: "Image-Level AUC", "Pixel-Level AUC", "Image F1 Score", each with a
/// column per category and the average first.
pub fn seed_tables(rows: &[(String, Metrics)]) -> String {
    let tables: [Column; 3] = [
        ("Image-Level AUC", |m| m.image_auroc),
        ("Pixel-Level AUC", |m| m.pixel_auroc),
        ("Image F1 Score", |m| m.image_f1),
    ];
    let mut out = String::new();
    for (title, get) in tables {
        out += &format!("### {title}\n\n|   | Avg |");
        for (category, _) in rows {
            out += &format!(" {category} |");
        }
        out += &format!("\n|---|---:|{}\n| PatchCore |", "---:|".repeat(rows.len()));
        out += &format!(" {} |", fmt_metric(mean(rows.iter().map(|(_, m)| get(m)))));
        for (_, m) in rows {
            out += &format!(" {} |", fmt_metric(get(m)));
        }
        out += "\n\n";
    }
    out
}

/// category,image_auroc,pixel_auroc,image_f1,pixel_f1,aupro (empty for undefined).
pub fn csv(rows: &[(String, Metrics)]) -> String {
    let mut out = String::from("category,image_auroc,pixel_auroc,image_f1,pixel_f1,aupro\n");
    for (category, m) in rows {
        let cells: Vec<String> =
            COLUMNS.iter().map(|(_, get)| get(m).map_or(String::new(), |v| v.to_string())).collect();
        out += &format!("{category},{}\n", cells.join(","));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(image: f64, pixel: Option<f64>) -> Metrics {
        Metrics {
            image_auroc: Some(image),
            pixel_auroc: pixel,
            image_f1: Some(1.0),
            pixel_f1: None,
            aupro: None,
            skipped_masks: 0,
        }
    }

    #[test]
    fn averages_skip_undefined_values() {
        let rows = vec![("a".to_string(), m(0.9, Some(0.8))), ("b".to_string(), m(0.7, None))];
        let t = metrics_table(&rows, &[]);
        assert!(t.contains("| a | 0.900 | 0.800 | 1.000 | n/a | n/a |"), "{t}");
        assert!(t.contains("| **Average** | 0.800 | 0.800 |"), "{t}");
        let seed = seed_tables(&rows);
        assert!(seed.contains("### Image-Level AUC\n\n|   | Avg | a | b |"), "{seed}");
        assert!(seed.contains("| PatchCore | 0.800 | 0.900 | 0.700 |"), "{seed}");
        assert_eq!(csv(&rows).lines().nth(2), Some("b,0.7,,1,,"));
    }
}
