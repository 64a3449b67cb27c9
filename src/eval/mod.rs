//! Evaluation: thresholds and normalisation.

pub mod threshold;
