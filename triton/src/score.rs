//! One Triton batch (several requests, each with its own images) scored as one engine batch,
//! and split back into each request's answer.

use crate::images::ImageBatch;
use patchcore::backend::Backend;
use patchcore::patchcore::{map_to_image, PatchCore, Prediction};

/// One image's answer: the outputs SCORE, NORMALIZED and ANOMALOUS, and ANOMALY_MAP when the
/// request asked for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub score: f32,
    pub normalized: f32,
    pub anomalous: bool,
    /// At the input's size, row-major, normalised as the CLI's overlays colour it (0.5 is the
    /// pixel threshold, values clamped to [0, 1]).
    pub map: Option<Vec<f32>>,
}

/// What one request brings: its images (or why they were refused) and whether it wants maps.
pub struct Job {
    pub images: Result<ImageBatch, String>,
    pub want_map: bool,
}

/// One request's verdicts, with the size its maps have.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub verdicts: Vec<Verdict>,
    pub width: u32,
    pub height: u32,
}

/// Why a request got no answer: its own input (the client's to fix) or the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum Refused {
    Request(String),
    Engine(String),
}

/// Scores every accepted request's images in one `predict` call, so a dynamic batch of N
/// single-image requests is one forward pass. A refused request keeps its message and does
/// not hold up the others; an engine failure is every accepted request's answer.
pub fn score_jobs<B: Backend>(core: &PatchCore<B>, jobs: Vec<Job>) -> Vec<Result<Answer, Refused>> {
    let mut answers = Vec::with_capacity(jobs.len());
    let mut counts = Vec::with_capacity(jobs.len());
    let mut all = Vec::new();
    for job in jobs {
        match job.images {
            Ok(batch) => {
                counts.push(batch.images.len());
                answers.push(Ok((batch.width, batch.height, job.want_map)));
                all.extend(batch.images);
            }
            Err(message) => {
                counts.push(0);
                answers.push(Err(Refused::Request(message)));
            }
        }
    }
    let predictions = if all.is_empty() { Ok(Vec::new()) } else { core.predict(&all) };
    let predictions = match predictions {
        Ok(predictions) => predictions,
        Err(e) => {
            let refused = Refused::Engine(e.to_string());
            return answers.into_iter().map(|a| a.and(Err(refused.clone()))).collect();
        }
    };
    let mut next = predictions.iter();
    answers
        .into_iter()
        .zip(counts)
        .map(|(answer, count)| {
            let (width, height, want_map) = answer?;
            let map_size = want_map.then_some((width, height));
            let verdicts = next.by_ref().take(count).map(|p| verdict(core, p, map_size)).collect();
            Ok(Answer { verdicts, width, height })
        })
        .collect()
}

fn verdict<B: Backend>(core: &PatchCore<B>, prediction: &Prediction, map_size: Option<(u32, u32)>) -> Verdict {
    let meta = core.meta();
    let map = map_size.map(|(width, height)| {
        let raw = map_to_image(&prediction.map, &meta.preprocess, width, height);
        raw.into_iter().map(|v| meta.pixel.apply(v)).collect()
    });
    Verdict { score: prediction.score, normalized: prediction.normalized, anomalous: prediction.anomalous, map }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};
    use patchcore::backbone::weights::HashedWeights;
    use patchcore::backbone::{Architecture, Backbone, ConvOrigin};
    use patchcore::backend::CpuBackend;
    use patchcore::patchcore::FitOptions;

    /// A striped texture with seeded noise; `defect` paints a bright square into it.
    fn texture(size: u32, seed: u64, defect: bool) -> RgbImage {
        let mut rng = patchcore::rng::SplitMix64::new(seed);
        RgbImage::from_fn(size, size, |x, y| {
            let v = 120.0 + 50.0 * (x as f32 * 0.8).sin() * (y as f32 * 0.5).cos() + rng.next_f64() as f32 * 16.0;
            let square = defect && (size / 3..size / 2).contains(&x) && (size / 3..size / 2).contains(&y);
            if square {
                Rgb([250, 30, 200])
            } else {
                Rgb([v as u8, (v * 0.9) as u8, (v * 0.7) as u8])
            }
        })
    }

    /// ResNet-18 with hashed weights at 64 px on six textures (as tests/ffi.rs fits its model).
    fn model() -> PatchCore<CpuBackend> {
        let dir = std::env::temp_dir().join(format!("triton-patchcore-fit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let train: Vec<_> = (0..6)
            .map(|i| {
                let path = dir.join(format!("{i}.png"));
                texture(64, i, false).save(&path).unwrap();
                path
            })
            .collect();
        let backbone =
            Backbone::load(&CpuBackend::default(), Architecture::Resnet18, ConvOrigin::Torchvision(&HashedWeights))
                .unwrap();
        let options = FitOptions {
            preprocess: Architecture::Resnet18.preprocess(64, None).unwrap(),
            ratio: 0.25,
            ..FitOptions::default()
        };
        let core = PatchCore::fit(CpuBackend::default(), backbone, &train, None, &options, &mut |_, _, _| {});
        std::fs::remove_dir_all(&dir).unwrap();
        core.unwrap()
    }

    fn job(images: Vec<image::RgbImage>, want_map: bool) -> Job {
        let (width, height) = images[0].dimensions();
        Job { images: Ok(ImageBatch { images, width, height }), want_map }
    }

    /// One request alone, as the engine scores it: the reference for the batched answers.
    fn alone(core: &PatchCore<CpuBackend>, image: &image::RgbImage) -> Verdict {
        let prediction = &core.predict(std::slice::from_ref(image)).unwrap()[0];
        verdict(core, prediction, Some(image.dimensions()))
    }

    #[test]
    fn a_batch_of_requests_answers_each_as_if_alone_and_refusals_stay_their_own() {
        let core = model();
        let good = texture(64, 7, false);
        let defect = texture(80, 8, true);
        let jobs = vec![
            job(vec![good.clone()], true),
            Job { images: Err("IMAGE is 0x0".into()), want_map: true },
            job(vec![defect.clone(), defect.clone()], false),
        ];
        let answers = score_jobs(&core, jobs);
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[1], Err(Refused::Request("IMAGE is 0x0".to_string())));

        // Batched and single forward passes agree up to float rounding (the C ABI's promise).
        let close = |got: &Verdict, want: &Verdict| {
            assert!((got.score - want.score).abs() <= 1e-5 * want.score.abs().max(1.0), "{got:?} vs {want:?}");
            assert_eq!(got.anomalous, want.anomalous);
        };
        let first = &answers[0].as_ref().unwrap().verdicts;
        assert_eq!(first.len(), 1);
        let want = alone(&core, &good);
        close(&first[0], &want);
        let (got_map, want_map) = (first[0].map.as_ref().unwrap(), want.map.as_ref().unwrap());
        assert_eq!(got_map.len(), 64 * 64);
        let worst = got_map.iter().zip(want_map).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-5, "map differs by {worst}");

        let third = answers[2].as_ref().unwrap();
        assert_eq!((third.verdicts.len(), third.width, third.height), (2, 80, 80));
        let want = alone(&core, &defect);
        for v in &third.verdicts {
            close(v, &want);
            assert!(v.map.is_none(), "no map was asked for");
        }
        assert!(want.score > first[0].score, "the defect scores above the good image");
    }
}
