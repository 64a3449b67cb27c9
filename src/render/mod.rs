//! Anomaly overlays for people: what an inspector on a production line
//! looks at to see where a part is defective and how sure the model is.
//!
//! [`render_overlay`] turns a picture, its normalised anomaly map and the
//! image verdict into one RGB picture: the map in OpenCV's jet colours
//! blended over the picture ([`blend_heat`], [`jet`]), the predicted region
//! outlined ([`render_mask_outline`], also used for ground-truth outlines),
//! and a caption such as "ANOMALY 87%" drawn with a built-in bitmap font
//! ([`draw_text`], [`draw_text_boxed`]), so no font files are needed.
//!
//! For the evaluation report: [`plot`] draws the score histogram and the ROC and PRO curves as
//! inline SVG, [`text_histogram`] the histogram for a terminal, [`examples`] picks the test
//! images worth showing, and [`report`] writes the HTML.

mod colormap;
pub mod examples;
mod font;
mod overlay;
pub mod plot;
mod prediction;
pub mod report;
pub mod text_histogram;

pub use colormap::{jet, JET};
pub use font::{draw_text, draw_text_boxed, text_size};
pub use overlay::{blend_heat, render_mask_outline, render_overlay, OverlayStyle};
pub use prediction::{prediction_overlay, side_by_side, write_png, TRUTH_COLOUR};
