//! Evaluation arithmetic: thresholds, normalisation, the metrics (AUROC, F1, AUPRO), their
//! curves and the score histogram. The loop that scores a labelled set with a model is
//! `patchcore::evaluate`, beside the model.

pub mod curve;
pub mod histogram;
pub mod metrics;
pub mod table;
pub mod threshold;
