//! Evaluation: thresholds, normalisation and the metrics (AUROC, F1, AUPRO).

pub mod metrics;
pub mod threshold;
