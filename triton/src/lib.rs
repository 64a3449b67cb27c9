//! `libtriton_patchcore.so`: a Triton Inference Server backend over the patchcore engine.
//! Triton brings dynamic batching, instances per CPU or GPU, HTTP/gRPC (KServe v2) and
//! metrics; this library turns a batch of requests into one engine batch and answers each
//! with SCORE, NORMALIZED, ANOMALOUS and, when asked, ANOMALY_MAP. docs/SERVING.md shows the
//! model repository and how to run it; scripts/triton-check.sh tests it against a real server.
//!
//! The request logic (config, images, score) is plain Rust and unit-tested. The entry points
//! and Triton's declarations are left out of the test build: a test executable would have to
//! resolve Triton's symbols, which only the server provides.

mod config;
#[cfg(not(test))]
mod entry;
mod images;
mod score;
#[cfg(not(test))]
mod sys;
