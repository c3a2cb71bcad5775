//! `pipe-torch serve`: the long-lived worker behind `pipe serve`. It loads every model and
//! its backbone once, then captions each batch `pipe` sends (see `pipe::contract::serve`):
//! one backbone pass and one beam search for all the images of a batch.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use tch::Tensor;

use super::captioner::{CaptionModel, DecodeSettings};
use crate::model::backbone::{decode_rgb, Backbone, Preprocess, ResolveDevice, ThreadPlan};
use crate::model::data::caption_text;
use pipe::contract::serve::{
    read_request, CaptionRequest, CaptionResponse, Hypothesis, ImageCaption, ImageOutcome, LoadedModel,
    Ready, ServeConfig, ServeModel,
};
use pipe::stages::caption::DecoderKind;

struct Served {
    spec: ServeModel,
    model: CaptionModel,
    /// Shared by the models that read the same backbone on the same device (a sweep's).
    backbone: Rc<Backbone>,
    info: LoadedModel,
}

/// Loads the models, writes the [`Ready`] line, then answers requests until `input` ends.
pub fn serve(config: &ServeConfig, input: &mut impl BufRead, output: &mut impl Write) -> Result<()> {
    let mut served = HashMap::new();
    let mut loaded = Vec::new();
    let mut backbones: HashMap<String, Rc<Backbone>> = HashMap::new();
    for spec in &config.models {
        let device = spec.params.device.resolve()?;
        tch::set_num_threads(ThreadPlan::new(0, device).torch as i32);
        let dirs: Vec<&std::path::Path> = spec.model_dirs.iter().map(|d| d.as_path()).collect();
        let model = CaptionModel::load_ensemble(&dirs, &spec.vocab, device)
            .with_context(|| format!("model of stage {}", spec.name))?;
        let key = format!("{}\0{:?}\0{:?}", spec.backbone.display(), device, spec.precision);
        let backbone = match backbones.get(&key) {
            Some(backbone) => backbone.clone(),
            None => {
                let backbone = Rc::new(
                    Backbone::load(&spec.backbone, spec.params.device, spec.precision)
                        .with_context(|| format!("backbone of stage {}", spec.name))?,
                );
                backbones.insert(key, backbone.clone());
                backbone
            }
        };
        let decoder = match model.configs.as_slice() {
            [one] => one.name().to_string(),
            several => format!("ensemble of {}", several.len()),
        };
        let grid = backbone.spec().grid;
        let attention = model.configs.len() == 1 && model.configs[0].attends() && grid.is_some();
        let info = LoadedModel { name: spec.name.clone(), decoder, attention, grid };
        loaded.push(info.clone());
        served.insert(spec.name.clone(), Served { spec: spec.clone(), model, backbone, info });
    }
    writeln!(output, "{}", serde_json::to_string(&Ready { models: loaded })?)?;
    output.flush()?;
    while let Some((request, images)) = read_request(input)? {
        let response = match served.get(&request.model) {
            None => CaptionResponse {
                id: request.id,
                results: vec![],
                error: Some(format!("no model `{}`", request.model)),
            },
            Some(model) => match caption_batch(model, &request, &images) {
                Ok(results) => CaptionResponse { id: request.id, results, error: None },
                Err(err) => {
                    CaptionResponse { id: request.id, results: vec![], error: Some(format!("{err:#}")) }
                }
            },
        };
        writeln!(output, "{}", serde_json::to_string(&response)?)?;
        output.flush()?;
        crate::memory::release_free_memory();
    }
    Ok(())
}

/// Captions one batch: undecodable images get their own error, the rest share one
/// backbone pass and one decode.
fn caption_batch(served: &Served, request: &CaptionRequest, images: &[Vec<u8>]) -> Result<Vec<ImageOutcome>> {
    let backbone = &served.backbone;
    let prepare = Preprocess::new(backbone.spec());
    let mut pixels = Vec::with_capacity(images.len() * prepare.image_len);
    let mut decoded = Vec::with_capacity(images.len());
    for bytes in images {
        match decode_rgb(bytes) {
            Ok(img) => {
                let at = pixels.len();
                pixels.resize(at + prepare.image_len, 0);
                prepare.image_into(&img, &mut pixels[at..]);
                decoded.push(Ok(()));
            }
            Err(err) => decoded.push(Err(format!("{err:#}"))),
        }
    }
    let good = decoded.iter().filter(|d| d.is_ok()).count();
    let mut captions = Vec::new().into_iter();
    if good > 0 {
        let mut rows = Vec::new();
        backbone.forward_pixels_into(&pixels, good, &mut rows)?;
        let rows = Tensor::from_slice(&rows).view([good as i64, backbone.row_len() as i64]);
        let mut settings = DecodeSettings::from(&served.spec.params);
        if request.beam_width <= 1 {
            settings.decoder = DecoderKind::Greedy;
        } else {
            (settings.decoder, settings.beam_width) = (DecoderKind::Beam, request.beam_width);
        }
        let ranked = served.model.decode_ranked(&rows, &settings)?;
        let maps = if request.attention && served.info.attention {
            let best: Vec<Vec<i64>> = ranked.iter().map(|r| r[0].tokens.clone()).collect();
            Some(served.model.attention_maps(&rows, &best, settings.batch_size)?)
        } else {
            None
        };
        let vocab = &served.model.vocab;
        let mut maps = maps.map(Vec::into_iter);
        captions = ranked
            .into_iter()
            .map(|beams| {
                let beams: Vec<Hypothesis> = beams
                    .iter()
                    .map(|h| Hypothesis { caption: caption_text(vocab, &h.tokens), log_prob: h.log_prob })
                    .collect();
                ImageCaption {
                    caption: beams[0].caption.clone(),
                    log_prob: beams[0].log_prob,
                    beams,
                    attention: maps.as_mut().and_then(Iterator::next),
                }
            })
            .collect::<Vec<_>>()
            .into_iter();
    }
    let outcomes = decoded
        .into_iter()
        .map(|d| match d {
            Ok(()) => ImageOutcome::Captioned(captions.next().expect("one caption per decoded image")),
            Err(error) => ImageOutcome::Failed { error },
        })
        .collect();
    if captions.next().is_some() {
        bail!("more captions than decoded images");
    }
    Ok(outcomes)
}
