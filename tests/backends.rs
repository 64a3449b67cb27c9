//! Every backend operation against a float64 reference written here, once, and expanded by
//! `backend_test!` into one test per backend case: `<op>_cpu`, `<op>_cuda_f32`,
//! `<op>_cuda_tf32` and `<op>_cuda_f16`, so that each case passes or fails on its own and
//! `cargo test cuda_f16` runs one precision. A CUDA case without a usable GPU (no `--features
//! cuda`, or no device) prints why and passes, unless PATCHCORE_REQUIRE_GPU=1
//! (scripts/gpu-check.sh sets it): then a missing GPU fails it instead of passing it silently.
//!
//! Tolerance: relative error (max |got - want| / max |want|) at most 1e-4 for exact f32
//! arithmetic; 5e-3 for convolutions and distances on TF32 tensor cores (10-bit mantissa,
//! relative rounding 2^-11 per product) and f16 bank rows (the same 11 significant bits).

mod common;

use common::{clustered, covering_radius, rel_err, TempDir};
use patchcore::backbone::weights::SafetensorsFile;
use patchcore::backbone::{Architecture, Backbone, ConvOrigin};
use patchcore::backend::cpu::{l2_distance, ClusterOrder};
use patchcore::backend::{
    Activation, AnyBackend, Backend, ConvSpec, ConvWeights, CpuBackend, CudaBackend, DeviceChoice, Padding, Precision,
};
use patchcore::data::dataset::Category;
use patchcore::data::image::{load_rgb, Preprocess};
use patchcore::data::synth::{generate, SynthOptions};
use patchcore::patchcore::evaluate::evaluate;
use patchcore::patchcore::{FitOptions, PatchCore};
use patchcore::rng::SplitMix64;
use patchcore::Tensor;

const EXACT: f64 = 1e-4;
const TENSOR_CORES: f64 = 5e-3;

struct Case {
    name: &'static str,
    backend: AnyBackend,
    /// The bound for convolutions and distances; every other operation is exact f32 everywhere.
    products: f64,
    /// Coreset rows in f32, so the selection must equal the CPU's exactly.
    exact_coreset: bool,
    /// The GPU arithmetic (None on the CPU).
    precision: Option<Precision>,
}

fn require_gpu() -> bool {
    std::env::var("PATCHCORE_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

impl Case {
    fn cpu() -> Case {
        Case {
            name: "cpu",
            backend: AnyBackend::Cpu(CpuBackend::default()),
            products: EXACT,
            exact_coreset: true,
            precision: None,
        }
    }

    /// CUDA in `precision` on device 0; `None` after printing why not, when there is no usable GPU
    /// and PATCHCORE_REQUIRE_GPU is not 1.
    fn cuda(precision: Precision) -> Option<Case> {
        let (name, products) = match precision {
            Precision::F32 => ("cuda f32", EXACT),
            Precision::Tf32 => ("cuda tf32", TENSOR_CORES),
            Precision::F16 => ("cuda f16", TENSOR_CORES),
            Precision::Bf16 => panic!("bf16 is a CPU precision, not a CUDA case"),
        };
        match CudaBackend::new(0, precision) {
            Ok(b) => Some(Case {
                name,
                backend: AnyBackend::Cuda(b),
                products,
                exact_coreset: precision != Precision::F16,
                precision: Some(precision),
            }),
            Err(e) if require_gpu() => panic!("PATCHCORE_REQUIRE_GPU=1 but CUDA is unusable: {e}"),
            Err(e) => {
                eprintln!("skipping {name}: {e}");
                None
            }
        }
    }
}

/// `backend_test!(body, cpu: a, cuda: b, c, d)` defines the tests `a` (the CPU), `b`, `c` and `d`
/// (CUDA in f32, tf32 and f16), each calling `body(case)` with its case: candle's `test_device!`.
/// The names are spelled out because macro_rules cannot paste identifiers. Without `cpu:`, only the
/// CUDA tests (for a body that compares a GPU with the CPU).
macro_rules! backend_test {
    ($body:ident, cpu: $cpu:ident, cuda: $f32:ident, $tf32:ident, $f16:ident) => {
        #[test]
        fn $cpu() {
            $body(Case::cpu());
        }
        backend_test!($body, cuda: $f32, $tf32, $f16);
    };
    ($body:ident, cuda: $f32:ident, $tf32:ident, $f16:ident) => {
        backend_test!(@cuda $body, $f32, Precision::F32);
        backend_test!(@cuda $body, $tf32, Precision::Tf32);
        backend_test!(@cuda $body, $f16, Precision::F16);
    };
    (@cuda $body:ident, $test:ident, $precision:expr) => {
        #[test]
        fn $test() {
            if let Some(case) = Case::cuda($precision) {
                $body(case);
            }
        }
    };
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let n = shape.iter().product();
    Tensor::new(shape.to_vec(), (0..n).map(|_| rng.normal() as f32).collect())
}

fn check(case: &Case, what: &str, got: &[f32], want: &[f64], tol: f64) {
    let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    let e = rel_err(got, &want);
    // scripts/gpu-check.sh collects these lines into its parity table.
    println!("parity: {} | {what} | {e:.2e} | {tol:.0e}", case.name);
    assert!(e <= tol, "{}: {what}: relative error {e:.2e} > {tol:.0e}", case.name);
}

// ---- convolution ------------------------------------------------------------------------

fn conv_reference(x: &Tensor, conv: &ConvWeights, residual: Option<&Tensor>) -> Vec<f64> {
    let [b, c, h, w] = x.dims4().unwrap();
    let s = &conv.spec;
    let (ho, top) = s.padding.resolve(h, s.kernel, s.stride);
    let (wo, left) = s.padding.resolve(w, s.kernel, s.stride);
    let (cg, og) = (c / s.groups, s.out_channels / s.groups);
    let mut out = Vec::with_capacity(b * s.out_channels * ho * wo);
    for n in 0..b {
        for o in 0..s.out_channels {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut sum = conv.bias[o] as f64;
                    for ci in 0..cg {
                        for ky in 0..s.kernel {
                            for kx in 0..s.kernel {
                                let iy = (oy * s.stride + ky) as isize - top as isize;
                                let ix = (ox * s.stride + kx) as isize - left as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi = ((n * c + (o / og) * cg + ci) * h + iy as usize) * w + ix as usize;
                                let wi = ((o * cg + ci) * s.kernel + ky) * s.kernel + kx;
                                sum += x.data[xi] as f64 * conv.weight[wi] as f64;
                            }
                        }
                    }
                    if let Some(r) = residual {
                        sum += r.data[((n * s.out_channels + o) * ho + oy) * wo + ox] as f64;
                    }
                    out.push(match s.activation {
                        Activation::None => sum,
                        Activation::Relu => sum.max(0.0),
                        Activation::Relu6 => sum.clamp(0.0, 6.0),
                    });
                }
            }
        }
    }
    out
}

backend_test!(
    conv2d_matches_float64,
    cpu: conv2d_cpu,
    cuda: conv2d_cuda_f32, conv2d_cuda_tf32, conv2d_cuda_f16
);

fn conv2d_matches_float64(case: Case) {
    // ResNet's stem, a residual 3x3, a strided 1x1 downsample, EfficientNet's TF-same strided
    // stem (asymmetric padding), depthwise 3x3/5x5 with ReLU6, a grouped 3x3.
    let specs = [
        (64, 8, 7, 2, Padding::Symmetric(3), 1, Activation::Relu, false),
        (8, 8, 3, 1, Padding::Symmetric(1), 1, Activation::Relu, true),
        (8, 16, 1, 2, Padding::Symmetric(0), 1, Activation::None, false),
        (3, 8, 3, 2, Padding::TfSame, 1, Activation::Relu6, false),
        (8, 8, 3, 2, Padding::TfSame, 8, Activation::Relu6, false),
        (8, 8, 5, 1, Padding::TfSame, 8, Activation::None, true),
        (8, 12, 3, 1, Padding::Symmetric(1), 4, Activation::Relu, false),
    ];
    let b = &case.backend;
    for (i, &(in_c, out_c, kernel, stride, padding, groups, activation, with_residual)) in specs.iter().enumerate() {
        let in_c = if i == 0 { 3 } else { in_c };
        let spec = ConvSpec { in_channels: in_c, out_channels: out_c, kernel, stride, padding, groups, activation };
        let x = random(&[2, in_c, 17, 22], 10 + i as u64);
        let weights = ConvWeights {
            spec,
            weight: random(&spec.weight_shape(), 20 + i as u64).data.iter().map(|v| v * 0.2).collect::<Vec<_>>().into(),
            bias: random(&[out_c], 30 + i as u64).data,
        };
        let (ho, _) = padding.resolve(17, kernel, stride);
        let (wo, _) = padding.resolve(22, kernel, stride);
        let residual = with_residual.then(|| random(&[2, out_c, ho, wo], 40 + i as u64));
        let want = conv_reference(&x, &weights, residual.as_ref());
        let conv = b.prepare_conv(&weights).unwrap();
        let r = residual.as_ref().map(|r| b.upload(r).unwrap());
        let y = b.conv2d(&b.upload(&x).unwrap(), &conv, r.as_ref()).unwrap();
        assert_eq!(y.shape(), &[2, out_c, ho, wo][..], "{}: conv {i} shape", case.name);
        check(&case, &format!("conv {i} {spec:?}"), &b.download(&y).unwrap().data, &want, case.products);
    }
}

backend_test!(
    max_pool_matches_float64,
    cpu: max_pool_cpu,
    cuda: max_pool_cuda_f32, max_pool_cuda_tf32, max_pool_cuda_f16
);

fn max_pool_matches_float64(case: Case) {
    let x = random(&[2, 3, 15, 20], 1);
    let (ho, wo): (usize, usize) = ((15 + 2 - 3) / 2 + 1, (20 + 2 - 3) / 2 + 1);
    let mut want = Vec::new();
    for plane in x.data.chunks(15 * 20) {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut m = f64::NEG_INFINITY;
                for y in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(15) {
                    for xx in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(20) {
                        m = m.max(plane[y * 20 + xx] as f64);
                    }
                }
                want.push(m);
            }
        }
    }
    let b = &case.backend;
    let y = b.max_pool(&b.upload(&x).unwrap(), 3, 2, 1).unwrap();
    assert_eq!(y.shape(), &[2, 3, ho, wo][..]);
    check(&case, "max_pool", &b.download(&y).unwrap().data, &want, EXACT);
}

backend_test!(nan_is_handled_as_the_cpu, cpu: nan_cpu, cuda: nan_cuda_f32, nan_cuda_tf32, nan_cuda_f16);

/// A NaN in the input: ReLU gives 0 (f32::max(NaN, 0), cuDNN's NOT_PROPAGATE_NAN), ReLU6 and
/// identity keep NaN (`bias_act`'s two comparisons), max-pool skips it (f32::max). Every
/// backend must give the same NaN pattern and values as these rules.
fn nan_is_handled_as_the_cpu(case: Case) {
    let b = &case.backend;
    let mut x = random(&[1, 3, 9, 9], 90);
    x.data[4 * 9 + 4] = f32::NAN; // the middle of channel 0: every 3x3 window around it sees it
    for activation in [Activation::Relu, Activation::Relu6, Activation::None] {
        let spec = ConvSpec {
            in_channels: 3,
            out_channels: 4,
            kernel: 3,
            stride: 1,
            padding: Padding::Symmetric(1),
            groups: 1,
            activation,
        };
        let weights = ConvWeights {
            spec,
            weight: random(&spec.weight_shape(), 91).data.iter().map(|v| v * 0.2).collect::<Vec<_>>().into(),
            bias: random(&[4], 92).data,
        };
        let y = b.download(&b.conv2d(&b.upload(&x).unwrap(), &b.prepare_conv(&weights).unwrap(), None).unwrap());
        let y = y.unwrap().data;
        // NaN where a window sees the NaN, but for ReLU: f64::max(NaN, 0) is 0 as well.
        let want = conv_reference(&x, &weights, None);
        for (i, (&got, &w)) in y.iter().zip(&want).enumerate() {
            let (plane, at) = (i / 81, i % 81);
            let near = (at / 9).abs_diff(4) <= 1 && (at % 9).abs_diff(4) <= 1;
            assert_eq!(w.is_nan(), near && activation != Activation::Relu, "reference: output {plane}/{at}");
            match (activation, near) {
                (Activation::Relu, true) => assert_eq!(got, 0.0, "{}: ReLU(NaN) at {plane}/{at}", case.name),
                (_, true) => assert!(got.is_nan(), "{}: {activation:?}(NaN) at {plane}/{at} gave {got}", case.name),
                (_, false) => assert!((got as f64 - w).abs() <= 1e-2, "{}: {got} vs {w} at {plane}/{at}", case.name),
            }
        }
    }
    let pooled = b.download(&b.max_pool(&b.upload(&x).unwrap(), 3, 2, 1).unwrap()).unwrap().data;
    // The output whose window holds the NaN, (2, 2) of channel 0: the max of the 8 others.
    let others = (3..6).flat_map(|y| (3..6).map(move |x| (y, x))).filter(|&p| p != (4, 4));
    let want = others.map(|(y, xx)| x.data[y * 9 + xx]).fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(pooled[2 * 5 + 2], want, "{}: max-pool skips the NaN", case.name);
    assert!(pooled.iter().all(|v| !v.is_nan()), "{}: max-pool gave NaN", case.name);
}

// ---- embedding --------------------------------------------------------------------------

/// 3x3 average pool (zeros counted, / 9), then bilinear with align_corners = false, in f64.
fn pooled_resized(x: &Tensor, gh: usize, gw: usize) -> Vec<Vec<f64>> {
    let [_, _, h, w] = x.dims4().unwrap();
    let taps = |input: usize, output: usize| -> Vec<(usize, usize, f64)> {
        (0..output)
            .map(|dst| {
                let src = ((dst as f64 + 0.5) * input as f64 / output as f64 - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(input - 1);
                (i0, (i0 + 1).min(input - 1), src - i0 as f64)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, gh), taps(w, gw));
    x.data
        .chunks(h * w)
        .map(|plane| {
            let at = |y: isize, x: isize| {
                if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                    0.0
                } else {
                    plane[y as usize * w + x as usize] as f64
                }
            };
            let pooled: Vec<f64> = (0..h * w)
                .map(|p| {
                    let (y, x) = ((p / w) as isize, (p % w) as isize);
                    (-1..=1)
                        .flat_map(|dy| (-1..=1).map(move |dx| (dy, dx)))
                        .map(|(dy, dx)| at(y + dy, x + dx))
                        .sum::<f64>()
                        / 9.0
                })
                .collect();
            let mut out = Vec::with_capacity(gh * gw);
            for &(y0, y1, wy) in &ty {
                for &(x0, x1, wx) in &tx {
                    let top = (1.0 - wx) * pooled[y0 * w + x0] + wx * pooled[y0 * w + x1];
                    let bottom = (1.0 - wx) * pooled[y1 * w + x0] + wx * pooled[y1 * w + x1];
                    out.push((1.0 - wy) * top + wy * bottom);
                }
            }
            out
        })
        .collect()
}

backend_test!(
    embed_matches_float64,
    cpu: embed_cpu,
    cuda: embed_cuda_f32, embed_cuda_tf32, embed_cuda_f16
);

fn embed_matches_float64(case: Case) {
    let (l2, l3) = (random(&[2, 8, 9, 12], 3), random(&[2, 16, 5, 6], 4));
    let (gh, gw, width) = (9, 12, 24);
    let (p2, p3) = (pooled_resized(&l2, gh, gw), pooled_resized(&l3, gh, gw));
    let mut want = vec![0.0f64; 2 * gh * gw * width];
    for (offset, planes, c) in [(0, &p2, 8), (8, &p3, 16)] {
        for (bc, plane) in planes.iter().enumerate() {
            let (img, ch) = (bc / c, bc % c);
            for (p, &v) in plane.iter().enumerate() {
                want[(img * gh * gw + p) * width + offset + ch] = v;
            }
        }
    }
    let b = &case.backend;
    let rows = b.embed(&[&b.upload(&l2).unwrap(), &b.upload(&l3).unwrap()]).unwrap();
    assert_eq!(rows.shape(), &[2 * gh * gw, width][..]);
    check(&case, "embed", &b.download(&rows).unwrap().data, &want, EXACT);
}

// ---- pre-processing ---------------------------------------------------------------------

backend_test!(
    preprocess_matches_the_cpu,
    cpu: preprocess_cpu,
    cuda: preprocess_cuda_f32, preprocess_cuda_tf32, preprocess_cuda_f16
);

/// `Preprocess::batch` is the definition; a batch of two sizes, one shrunk and one enlarged, cropped.
fn preprocess_matches_the_cpu(case: Case) {
    let mut rng = SplitMix64::new(9);
    let mut noise =
        |w, h| image::RgbImage::from_fn(w, h, |_, _| image::Rgb(std::array::from_fn(|_| rng.below(256) as u8)));
    let images = [noise(131, 77), noise(131, 77), noise(40, 52), noise(131, 77)];
    let pre = Preprocess::new(64, Some(57), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).unwrap();
    let want = pre.batch(&images);
    let b = &case.backend;
    let input = b.preprocess(&images, &pre).unwrap();
    assert_eq!(input.shape(), &[4, 3, 57, 57][..], "{}: preprocess shape", case.name);
    let want: Vec<f64> = want.data.iter().map(|&v| v as f64).collect();
    check(&case, "preprocess", &b.download(&input).unwrap().data, &want, EXACT);
    assert!(b.preprocess(&[], &pre).is_err(), "{}: an empty batch is refused", case.name);
}

// ---- nearest neighbours -----------------------------------------------------------------

backend_test!(
    knn_matches_float64,
    cpu: knn_cpu,
    cuda: knn_cuda_f32, knn_cuda_tf32, knn_cuda_f16
);

fn knn_matches_float64(case: Case) {
    let (queries, bank) = (random(&[300, 72], 5), random(&[1000, 72], 6));
    let exact: Vec<Vec<f64>> = queries
        .data
        .chunks(72)
        .map(|q| {
            bank.data
                .chunks(72)
                .map(|m| q.iter().zip(m).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>().sqrt())
                .collect()
        })
        .collect();
    let b = &case.backend;
    let (q, m) = (b.upload(&queries).unwrap(), b.prepare_bank(bank.clone()).unwrap());
    for k in [1, 9, 16] {
        let (dist, idx) = b.knn(&q, &m, k).unwrap();
        assert_eq!((dist.len(), idx.len()), (300 * k, 300 * k));
        let mut want = Vec::with_capacity(300 * k);
        let mut of_returned = Vec::with_capacity(300 * k);
        for (qi, row) in exact.iter().enumerate() {
            let mut sorted = row.clone();
            sorted.sort_by(f64::total_cmp);
            want.extend_from_slice(&sorted[..k]);
            of_returned.extend(idx[qi * k..(qi + 1) * k].iter().map(|&j| row[j as usize]));
        }
        check(&case, &format!("knn k={k} distances"), &dist, &want, case.products);
        // The indices name rows at the distances returned (so they are right up to ties).
        check(&case, &format!("knn k={k} indices"), &dist, &of_returned, case.products);
    }
    assert!(b.knn(&q, &m, 0).is_err() && b.knn(&q, &m, 1001).is_err());

    // Given the rows' cluster order (the model file's), or any other order of them, the same
    // answers; an order of another bank is refused.
    let reversed = ClusterOrder::new((0..1000).rev().collect(), 1000).unwrap();
    for order in [ClusterOrder::of(&bank.data, 72), reversed] {
        let m = b.prepare_clustered_bank(bank.clone(), order).unwrap();
        assert_eq!(b.knn(&q, &m, 9).unwrap(), b.knn(&q, &b.prepare_bank(bank.clone()).unwrap(), 9).unwrap());
    }
    let other = ClusterOrder::new((0..999).collect(), 999).unwrap();
    let e = b.prepare_clustered_bank(bank.clone(), other).err().expect("refused").to_string();
    assert!(e.contains("a cluster order of 999 rows for a bank of 1000"), "{e}");
}

// ---- coreset ----------------------------------------------------------------------------

/// The textbook greedy k-center loop with the CPU's own f32 distance.
fn textbook_coreset(rows: &Tensor, n_select: usize, start: usize) -> Vec<u32> {
    let [n, d] = rows.dims2().unwrap();
    let row = |i: usize| &rows.data[i * d..(i + 1) * d];
    let mut min_d = vec![f32::INFINITY; n];
    let (mut centre, mut selected) = (start, Vec::new());
    for _ in 0..n_select {
        for (i, m) in min_d.iter_mut().enumerate() {
            *m = m.min(l2_distance(row(i), row(centre)));
        }
        // The first maximum: ties go to the lower index.
        centre = (0..n).fold(0, |best, i| if min_d[i] > min_d[best] { i } else { best });
        selected.push(centre as u32);
    }
    selected
}

backend_test!(
    coreset_selects_as_the_textbook_loop,
    cpu: coreset_cpu,
    cuda: coreset_cuda_f32, coreset_cuda_tf32, coreset_cuda_f16
);

fn coreset_selects_as_the_textbook_loop(case: Case) {
    // Isotropic rows, where no bound prunes, and clustered ones, where the bounds skip most rows.
    let inputs =
        [("isotropic", random(&[3000, 41], 7)), ("clustered", Tensor::new(vec![4000, 48], clustered(4000, 48, 20, 8)))];
    let b = &case.backend;
    for (what, rows) in &inputs {
        let want = textbook_coreset(rows, 300, 17);
        let got = b.coreset(&b.upload(rows).unwrap(), 300, 17).unwrap();
        if case.exact_coreset {
            assert_eq!(got, want, "{} {what}: the selection differs from the textbook loop", case.name);
        } else {
            let (r_got, r_want) = (covering_radius(rows, &got), covering_radius(rows, &want));
            assert!(r_got <= 1.10 * r_want, "{} {what}: covering radius {r_got} vs {r_want}", case.name);
        }
    }
    let rows = &inputs[0].1;
    assert!(b.coreset(&b.upload(rows).unwrap(), 3001, 0).is_err());
    assert!(b.coreset(&b.upload(rows).unwrap(), 1, 3000).is_err());
}

// ---- anomaly map ------------------------------------------------------------------------

backend_test!(
    anomaly_map_matches_float64,
    cpu: anomaly_map_cpu,
    cuda: anomaly_map_cuda_f32, anomaly_map_cuda_tf32, anomaly_map_cuda_f16
);

fn anomaly_map_matches_float64(case: Case) {
    let scores = random(&[2, 5, 7], 8);
    let (oh, ow, sigma) = (40usize, 56usize, 4.0f64);
    let radius = (4.0 * sigma + 0.5) as isize;
    let raw: Vec<f64> = (-radius..=radius).map(|x| (-((x * x) as f64) / (2.0 * sigma * sigma)).exp()).collect();
    let taps: Vec<f64> = raw.iter().map(|v| v / raw.iter().sum::<f64>()).collect();
    let reflect = |i: isize, n: usize| {
        let period = 2 * (n as isize - 1);
        let m = i.rem_euclid(period);
        (if m >= n as isize { period - m } else { m }) as usize
    };
    let mut want = Vec::new();
    for grid in scores.data.chunks(5 * 7) {
        let up = |y: usize, x: usize| grid[(y * 5 / oh) * 7 + x * 7 / ow] as f64;
        let rows: Vec<f64> = (0..oh * ow)
            .map(|p| {
                let (y, x) = (p / ow, p % ow);
                taps.iter().enumerate().map(|(t, k)| k * up(y, reflect(x as isize + t as isize - radius, ow))).sum()
            })
            .collect();
        for p in 0..oh * ow {
            let (y, x) = (p / ow, p % ow);
            want.push(
                taps.iter()
                    .enumerate()
                    .map(|(t, k)| k * rows[reflect(y as isize + t as isize - radius, oh) * ow + x])
                    .sum::<f64>(),
            );
        }
    }
    let map = case.backend.anomaly_map(&scores, oh, ow, sigma as f32).unwrap();
    assert_eq!(map.shape, vec![2, oh, ow]);
    check(&case, "anomaly_map", &map.data, &want, EXACT);
}

// ---- scoring ----------------------------------------------------------------------------

backend_test!(score_matches_the_cpu, cuda: score_cuda_f32, score_cuda_tf32, score_cuda_f16);

/// `Backend::score` against the CPU's: a batch of 3 images of 8 x 12 patches, each with one patch planted
/// at 3 times a bank row, far from every row but that one, so that the most anomalous patch and its m*
/// are the same in every precision and the comparison is of the arithmetic.
fn score_matches_the_cpu(case: Case) {
    let (images, h, w, d, m) = (3, 8, 12, 72, 800);
    let bank_rows = random(&[m, d], 11);
    let mut embedding = random(&[images * h * w, d], 12);
    for (image, bank_row) in [(0, 5), (1, 400), (2, 799)] {
        let patch = image * h * w + 17 + image * 20;
        for j in 0..d {
            embedding.data[patch * d + j] = 3.0 * bank_rows.data[bank_row * d + j];
        }
    }
    let want = CpuBackend::default().score(
        &embedding,
        &CpuBackend::default().prepare_bank(bank_rows.clone()).unwrap(),
        [h, w],
        9,
        [32, 48],
        4.0,
    );
    let want = want.unwrap();
    let b = &case.backend;
    let (q, bank) = (b.upload(&embedding).unwrap(), b.prepare_bank(bank_rows.clone()).unwrap());
    let got = b.score(&q, &bank, [h, w], 9, [32, 48], 4.0).unwrap();
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    check(&case, "score image scores", &got.scores, &wide(&want.scores), case.products);
    check(
        &case,
        "score max patch distances",
        &got.max_patch_distances,
        &wide(&want.max_patch_distances),
        case.products,
    );
    assert_eq!(got.maps.shape, [images, 32, 48]);
    check(&case, "score anomaly maps", &got.maps.data, &wide(&want.maps.data), case.products);
    let one = b.score(&q, &bank, [h, w], 1, [32, 48], 4.0).unwrap();
    assert_eq!(one.scores, one.max_patch_distances, "{}: one neighbour is the plain maximum", case.name);
    assert!(b.score(&q, &bank, [5, 5], 9, [32, 48], 4.0).is_err(), "288 rows are not whole 5 x 5 grids");
}

backend_test!(
    predict_waits_for_the_gpu_at_most_twice_a_batch,
    cuda: transfers_cuda_f32, transfers_cuda_tf32, transfers_cuda_f16
);

/// Issue 11: a batch's prediction stays on the device until its one download. The two waits are the pixel
/// staging buffer's guard (for the previous batch's copy) and that download.
fn predict_waits_for_the_gpu_at_most_twice_a_batch(case: Case) {
    let dir = TempDir::new("backends-transfers");
    let synth = SynthOptions { size: 64, train: 4, test_good: 1, test_per_defect: 1, seed: 5 };
    let root = generate(dir.path(), "washer", &synth).unwrap().root;
    let category = Category::open(&root).unwrap();
    let arch = Architecture::EfficientnetLite0;
    let weights = SafetensorsFile::bundled_efficientnet_lite0();
    let options = FitOptions { preprocess: arch.preprocess(64, None).unwrap(), ..FitOptions::default() };
    let backbone = Backbone::load(&case.backend, arch, ConvOrigin::Torchvision(&weights)).unwrap();
    let model = PatchCore::fit(case.backend, backbone, &category.train, None, &options, &mut |_, _, _| {}).unwrap();
    let counts = || match model.backend() {
        AnyBackend::Cuda(b) => b.transfer_counts(),
        AnyBackend::Cpu(_) => unreachable!("a CUDA case"),
    };
    let image = load_rgb(&category.test[0].path).unwrap();
    for batch in [1, 8] {
        let before = counts();
        model.predict(&vec![image.clone(); batch]).unwrap();
        let after = counts();
        let waits = after.synchronizations - before.synchronizations;
        let downloads = after.copies_to_host - before.copies_to_host;
        let uploads = after.copies_to_device - before.copies_to_device;
        println!("transfers: {} | batch {batch} | {waits} waits, {downloads} downloads, {uploads} uploads", case.name);
        assert!(waits <= 2, "{}: batch {batch} waited for the GPU {waits} times", case.name);
        assert_eq!(downloads, 1, "{}: batch {batch}", case.name);
    }
}

// ---- the whole pipeline -----------------------------------------------------------------

backend_test!(
    pipeline_matches_the_cpu,
    cuda: pipeline_cuda_f32, pipeline_cuda_tf32, pipeline_cuda_f16
);

/// A model fitted on the CPU, loaded on the GPU, scores the same images alike; a model fitted on
/// the GPU separates the defects as well as the CPU's.
fn pipeline_matches_the_cpu(case: Case) {
    let dir = TempDir::new("backends-pipeline");
    let synth = SynthOptions { size: 96, train: 8, test_good: 3, test_per_defect: 2, seed: 3 };
    let root = generate(dir.path(), "washer", &synth).unwrap().root;
    let category = Category::open(&root).unwrap();
    let arch = Architecture::EfficientnetLite0;
    let weights = SafetensorsFile::bundled_efficientnet_lite0();
    let options = FitOptions { preprocess: arch.preprocess(96, None).unwrap(), ..FitOptions::default() };
    let fit = |backend: AnyBackend| {
        let backbone = Backbone::load(&backend, arch, ConvOrigin::Torchvision(&weights)).unwrap();
        PatchCore::fit(backend, backbone, &category.train, Some(&category.test), &options, &mut |_, _, _| {}).unwrap()
    };
    let reference = fit(AnyBackend::Cpu(CpuBackend::default()));
    let model_path = dir.path().join("cpu.patchcore");
    reference.save(&model_path).unwrap();
    let images: Vec<_> = category.test.iter().map(|s| load_rgb(&s.path).unwrap()).collect();
    let want = reference.score_images(&images).unwrap();
    // Tensor-core errors compound through ~20 convolutions before the distances: 2e-2.
    let tol = if case.products == EXACT { EXACT } else { 2e-2 };
    let name = case.name;
    let loaded = PatchCore::load(case.backend, &model_path).unwrap();
    let got = loaded.score_images(&images).unwrap();
    let (gs, ws): (Vec<f32>, Vec<f32>) = got.iter().zip(&want).map(|(g, w)| (g.score, w.score)).unzip();
    let e = rel_err(&gs, &ws);
    println!("parity: {name} | pipeline image scores vs cpu | {e:.2e} | {tol:.0e}");
    assert!(e <= tol, "{}: image scores relative error {e:.2e}", name);
    let e = got.iter().zip(&want).map(|(g, w)| rel_err(&g.map, &w.map)).fold(0.0, f64::max);
    println!("parity: {name} | pipeline anomaly maps vs cpu | {e:.2e} | {tol:.0e}");
    assert!(e <= tol, "{}: anomaly map relative error {e:.2e}", name);
    let precision = case.precision.expect("a GPU case");
    let backend = match CudaBackend::new(0, precision) {
        Ok(b) => AnyBackend::Cuda(b),
        Err(e) => panic!("{}: a second backend on the same GPU: {e}", name),
    };
    let own = fit(backend);
    let auroc = evaluate(&own, &category.test, 4, &mut |_, _, _| {}, &mut |_, _| Ok(())).unwrap().metrics.image_auroc;
    assert!(auroc.unwrap() > 0.9, "{}: image AUROC {auroc:?} of a model fitted on it", name);
}

// ---- choosing a device ------------------------------------------------------------------

#[test]
fn an_unusable_gpu_is_reported_and_auto_falls_back_to_the_cpu() {
    let mut notice = None;
    let auto = AnyBackend::open(DeviceChoice::Auto, Precision::F32, |e| notice = Some(e.to_string())).unwrap();
    match (auto, CudaBackend::new(0, Precision::F32)) {
        (AnyBackend::Cuda(_), Ok(_)) => assert!(cfg!(feature = "cuda") && notice.is_none()),
        (AnyBackend::Cpu(_), Err(e)) => {
            assert!(!require_gpu(), "PATCHCORE_REQUIRE_GPU=1 but {e}");
            let e = e.to_string();
            assert_eq!(notice.as_deref(), Some(e.as_str()), "auto says why it uses the CPU");
            if cfg!(feature = "cuda") {
                let named = ["libcuda", "libcublas", "libcudnn", "device", "driver"].iter().any(|w| e.contains(w));
                assert!(e.contains("CUDA") && named, "the reason names what is missing: {e}");
            } else {
                assert!(e.contains("--features cuda"), "{e}");
            }
            let explicit = AnyBackend::open(DeviceChoice::Cuda(0), Precision::F32, |_| panic!("no fallback")).err();
            assert_eq!(explicit.map(|e| e.to_string()), Some(e), "--device cuda fails with the same reason");
        }
        _ => panic!("auto and an explicit CUDA backend disagree about the GPU"),
    }
}

#[test]
fn a_missing_device_ordinal_is_refused() {
    match CudaBackend::new(4096, Precision::F32) {
        Ok(_) => panic!("no machine has 4097 GPUs"),
        Err(e) if cfg!(feature = "cuda") && CudaBackend::new(0, Precision::F32).is_ok() => {
            assert!(e.to_string().contains("device 4096 does not exist"), "{e}");
        }
        // Without a usable GPU the probe's reason comes first, the same for any ordinal.
        Err(e) => assert_eq!(Some(e.to_string()), CudaBackend::new(0, Precision::F32).err().map(|e| e.to_string())),
    }
}
