//! Evaluation arithmetic: thresholds, normalisation and the metrics (AUROC, F1, AUPRO). The
//! loop that scores a labelled set with a model is `patchcore::evaluate`, beside the model.

pub mod metrics;
pub mod table;
pub mod threshold;
