//! Evaluation: thresholds, normalisation and the metrics (AUROC, F1, AUPRO).

pub mod evaluate;
pub mod metrics;
pub mod table;
pub mod threshold;
