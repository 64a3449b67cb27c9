//! A chain of convolutions on the tiles (a residual block's main path): each link writes its
//! output straight into the next link's input, in the layout the tiles read (padded
//! channels-last bf16 or f32, `conv_amx::to_next`), so the NCHW f32 tensor between them is neither
//! written nor converted back. The result has the same bits as the links run one by one
//! (`tests::chains_equal_their_links_one_by_one`). In a trace, the first link's span includes
//! converting `x`, and each link's span includes writing the next link's input, as a lone
//! convolution's span includes converting its own input and writing its output.

use super::conv::{geometry, CpuConv, Geometry};
use super::conv_amx::{self, Arithmetic, ChannelsLast, PackedConv};
use super::CpuBackend;
use crate::backend::{traced, Link};
use crate::error::Result;
use crate::tensor::Tensor;

/// What one link hands on.
enum Step {
    /// The next link's input.
    Next(ChannelsLast),
    /// The chain's output.
    Done(Tensor),
    /// An input or an output between links that the tiles refuse (`amx::suitable`).
    Refused,
}

/// The links on the tiles in `arithmetic`, or `None` where that does not apply (no links, a link
/// not packed for the tiles, or values the tiles refuse): the caller then runs the links one by
/// one. Values refused between links are found while the chain runs, so in that (rare) case the
/// spans of the links before are recorded twice.
pub fn conv2d_chain(
    backend: &CpuBackend,
    x: &Tensor,
    links: &[Link<'_, CpuConv>],
    arithmetic: Arithmetic,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    // Each link's geometry and packed weights, and the chain's output shape.
    let mut shape = x.shape.clone();
    let mut plan: Vec<(Geometry, &PackedConv)> = Vec::with_capacity(links.len());
    for (i, link) in links.iter().enumerate() {
        let last_residual = residual.filter(|_| i + 1 == links.len()).map(|r| &r.shape[..]);
        let (out, g) = geometry(&link.conv.weights.spec, &shape, last_residual)?;
        let Some(packed) = link.conv.packed.as_ref() else { return Ok(None) };
        plan.push((g, packed));
        shape = out.to_vec();
    }
    let mut input = None;
    for (i, (link, (g, packed))) in links.iter().zip(&plan).enumerate() {
        let weights = &link.conv.weights;
        let step = traced(backend, link.span, || {
            // The first link converts x, with the geometry `stage` reads it with.
            let staged = match input.take() {
                Some(staged) => Some((staged, *g)),
                None => conv_amx::stage(x, arithmetic, g),
            };
            let Some((staged, g)) = staged else { return Ok(Step::Refused) };
            Ok(match plan.get(i + 1) {
                Some((next, _)) => {
                    conv_amx::to_next(&staged, weights, packed, &g, next).map_or(Step::Refused, Step::Next)
                }
                None => {
                    Step::Done(Tensor::new(shape.clone(), conv_amx::to_tensor(&staged, weights, packed, residual, &g)))
                }
            })
        })?;
        match step {
            Step::Next(staged) => input = Some(staged),
            Step::Done(out) => return Ok(Some(out)),
            Step::Refused => return Ok(None),
        }
    }
    // No links.
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::{amx, CpuBackend};
    use super::Arithmetic;
    use crate::backend::{conv2d_by_links, Activation, Backend, ConvSpec, ConvWeights, Link, Padding};
    use crate::rng::SplitMix64;
    use crate::tensor::Tensor;

    fn random(n: usize, scale: f64, rng: &mut SplitMix64) -> Vec<f32> {
        (0..n).map(|_| (scale * rng.normal()) as f32).collect()
    }

    fn conv(
        c: usize,
        out: usize,
        k: usize,
        stride: usize,
        activation: Activation,
        rng: &mut SplitMix64,
    ) -> ConvWeights {
        let padding = Padding::Symmetric(k / 2);
        let spec = ConvSpec { in_channels: c, out_channels: out, kernel: k, stride, padding, groups: 1, activation };
        ConvWeights { spec, weight: random(out * c * k * k, 0.2, rng).into(), bias: random(out, 0.5, rng) }
    }

    /// ResNet's chains (3x3 stride 2 then 3x3; a bottleneck's 1x1, strided 3x3, 1x1), with
    /// channels that are not a multiple of 16 (the scalar epilogue), a grid that ends mid-tile,
    /// every activation, and a chain whose values between links grow past `amx::LIMIT`: each
    /// gives the same bits as its links run one by one, in every arithmetic.
    fn check(arithmetic: Arithmetic) {
        let backend = CpuBackend { tiles: Some(arithmetic) };
        let mut rng = SplitMix64::new(21);
        let relu = Activation::Relu;
        let chains: [(usize, usize, Vec<ConvWeights>, f32); 4] = [
            (32, 18, vec![conv(32, 64, 3, 2, relu, &mut rng), conv(64, 64, 3, 1, relu, &mut rng)], 1.0),
            (
                32,
                13,
                vec![
                    conv(32, 24, 1, 1, Activation::Relu6, &mut rng),
                    conv(24, 40, 3, 2, Activation::None, &mut rng),
                    conv(40, 48, 1, 1, relu, &mut rng),
                ],
                1.0,
            ),
            (16, 20, vec![conv(16, 32, 3, 1, Activation::None, &mut rng), conv(32, 32, 1, 2, relu, &mut rng)], 1.0),
            // Inputs of 5e14 through 144 weights of 0.2: values past 1e15 after the first link.
            (16, 9, vec![conv(16, 32, 3, 1, Activation::None, &mut rng), conv(32, 32, 3, 1, relu, &mut rng)], 5e14),
        ];
        for (c, side, weights, scale) in chains {
            let x = Tensor::new(vec![2, c, side, side], random(2 * c * side * side, scale as f64, &mut rng));
            let prepared: Vec<_> = weights.iter().map(|w| backend.prepare_conv(w).unwrap()).collect();
            let first = backend.conv2d(&x, &prepared[0], None).unwrap();
            // The chain of the large inputs, and only it, must be refused between its links.
            assert_eq!(amx::suitable(&first.data), scale < 1e3, "scale {scale}: the case tested");
            let out = weights.iter().try_fold(x.shape.clone(), |shape, w| {
                crate::backend::checks::conv_output(&w.spec, &shape, None).map(|out| out.to_vec())
            });
            let out = out.unwrap();
            let residual = Tensor::new(out.clone(), random(out.iter().product(), 1.0, &mut rng));
            let span = || crate::trace::span("conv");
            let links: Vec<_> = prepared.iter().map(|conv| Link { conv, span: &span }).collect();
            let got = backend.conv2d_chain(&x, &links, Some(&residual)).unwrap();
            let want = conv2d_by_links(&backend, &x, &links, Some(&residual)).unwrap();
            let bits = |t: &Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(got.shape, want.shape);
            assert!(
                bits(&got) == bits(&want),
                "{arithmetic:?}: chain of {} from {c} channels at {side} px",
                links.len()
            );
        }
    }

    #[test]
    fn chains_equal_their_links_one_by_one() {
        for arithmetic in [Arithmetic::Split, Arithmetic::Bf16, Arithmetic::F32] {
            match arithmetic.unavailable_reason() {
                Some(reason) => println!("{arithmetic:?} skipped: {reason}"),
                None => check(arithmetic),
            }
        }
    }
}
