//! Captions: five varied descriptions of a scene, none contradicting the picture.

use rand::seq::IndexedRandom;
use rand::Rng;

use super::scene::*;
use super::{CAPTIONS_PER_IMAGE, MAX_WORDS, MIN_WORDS};

pub(super) fn noun(shape: Shape, plural: bool, rng: &mut impl Rng) -> &'static str {
    let choices: &[&str] = match (shape, plural) {
        (Shape::Circle, false) => &["circle", "circle", "disc"],
        (Shape::Circle, true) => &["circles", "circles", "discs"],
        (Shape::Square, false) => &["square", "square", "box", "block"],
        (Shape::Square, true) => &["squares", "squares", "boxes", "blocks"],
        (Shape::Triangle, false) => &["triangle"],
        (Shape::Triangle, true) => &["triangles"],
    };
    pick(rng, choices)
}

pub(super) fn size_word(size: Size, rng: &mut impl Rng) -> &'static str {
    match size {
        Size::Small => pick(rng, &["small", "small", "little", "tiny"]),
        Size::Large => pick(rng, &["big", "big", "large"]),
    }
}

/// "small red circle" (size mentioned with probability `p_size`).
pub(super) fn bare_object(
    shape: Shape,
    colour: Colour,
    size: Size,
    plural: bool,
    p_size: f64,
    rng: &mut impl Rng,
) -> String {
    let mut words = Vec::with_capacity(3);
    if rng.random_bool(p_size) {
        words.push(size_word(size, rng));
    }
    words.push(colour.word());
    words.push(noun(shape, plural, rng));
    words.join(" ")
}

/// "a small red circle".
pub(super) fn object_phrase(object: &Object, p_size: f64, rng: &mut impl Rng) -> String {
    format!("a {}", bare_object(object.shape, object.colour, object.size, false, p_size, rng))
}

pub(super) fn place_phrase(col: usize, row: usize, rng: &mut impl Rng) -> String {
    let h = ["left", "", "right"][col];
    let v = ["top", "", "bottom"][row];
    let upper = ["upper", "", "lower"][row];
    let choices: Vec<String> = match (col, row) {
        (1, 1) => vec!["in the middle".into(), "in the center".into(), "at the center".into()],
        (_, 1) => vec![format!("on the {h}"), format!("on the {h} side"), format!("at the {h}")],
        (1, _) => vec![format!("at the {v}"), format!("near the {v}")],
        _ => vec![
            format!("in the {v} {h} corner"),
            format!("at the {v} {h}"),
            format!("in the {upper} {h} corner"),
        ],
    };
    choices.choose(rng).expect("non-empty").clone()
}

pub(super) fn side_phrase(side: Side, rng: &mut impl Rng) -> String {
    let word = match side {
        Side::Left => "left",
        Side::Right => "right",
        Side::Top => "top",
        Side::Bottom => "bottom",
    };
    let choices: Vec<String> = match side {
        Side::Left | Side::Right => {
            vec![format!("on the {word}"), format!("on the {word} side"), format!("along the {word} side")]
        }
        Side::Top | Side::Bottom => {
            vec![format!("at the {word}"), format!("along the {word}"), format!("near the {word}")]
        }
    };
    choices.choose(rng).expect("non-empty").clone()
}

pub(super) fn describe_single(object: &Object, col: usize, row: usize, rng: &mut impl Rng) -> String {
    let (o, p) = (object_phrase(object, 0.75, rng), place_phrase(col, row, rng));
    match rng.random_range(0..6) {
        0 => format!("{o} {p}"),
        1 => format!("there is {o} {p}"),
        2 => format!("{p} there is {o}"),
        3 => format!("{o} is {p}"),
        4 => format!("{o} sits {p}"),
        _ => format!("{} of {o} {p}", pick(rng, &["an image", "a picture"])),
    }
}

pub(super) fn describe_pair(first: &Object, second: &Object, vertical: bool, rng: &mut impl Rng) -> String {
    let (a, b) = (object_phrase(first, 0.6, rng), object_phrase(second, 0.6, rng));
    if vertical {
        match rng.random_range(0..6) {
            0 => format!("{a} {} {b}", pick(rng, &["above", "over", "is above"])),
            1 => format!("{b} {} {a}", pick(rng, &["below", "under", "beneath", "is below"])),
            2 => format!("there is {a} above {b}"),
            3 => format!("{b} with {a} above it"),
            4 => format!("{a} at the top and {b} at the bottom"),
            _ => format!("{a} on top of {b}"),
        }
    } else {
        match rng.random_range(0..6) {
            0 => format!("{a} to the left of {b}"),
            1 => format!("{b} to the right of {a}"),
            2 => format!("{a} on the left and {b} on the right"),
            3 => format!("{b} on the right and {a} on the left"),
            4 => format!("{a} next to {b}"),
            _ => format!("{a} left of {b}"),
        }
    }
}

pub(super) fn describe_group(objects: &[Object], side: Side, rng: &mut impl Rng) -> String {
    let o = objects[0];
    let count = if objects.len() == 2 { "two" } else { "three" };
    let things = bare_object(o.shape, o.colour, o.size, true, 0.6, rng);
    let n = if objects.len() == 2 && rng.random_bool(0.25) {
        format!("a pair of {things}")
    } else {
        format!("{count} {things}")
    };
    let s = side_phrase(side, rng);
    let lined = if matches!(side, Side::Left | Side::Right) { "stacked" } else { "side by side" };
    match rng.random_range(0..4) {
        0 => format!("{n} {s}"),
        1 => format!("there are {n} {s}"),
        2 => format!("{s} there are {n}"),
        _ => format!("{n} {lined} {s}"),
    }
}

/// One caption in Flickr8k's style: sometimes capitalised, sometimes with " ." at the end.
pub(super) fn describe_once(scene: &Scene, rng: &mut impl Rng) -> String {
    match scene {
        Scene::Single { object, col, row } => describe_single(object, *col, *row, rng),
        Scene::Pair { first, second, vertical } => describe_pair(first, second, *vertical, rng),
        Scene::Group { objects, side } => describe_group(objects, *side, rng),
    }
}

pub(super) fn word_count(caption: &str) -> usize {
    caption.split_whitespace().count()
}

/// Five captions of `scene`, distinct where the wording allows, 5 to 12 words each.
pub fn describe(scene: &Scene, rng: &mut impl Rng) -> Vec<String> {
    let mut captions: Vec<String> = Vec::with_capacity(CAPTIONS_PER_IMAGE);
    let mut attempts = 0;
    while captions.len() < CAPTIONS_PER_IMAGE {
        attempts += 1;
        let caption = describe_once(scene, rng);
        let fits = (MIN_WORDS..=MAX_WORDS).contains(&word_count(&caption));
        let fresh = !captions.contains(&caption) || attempts > 200;
        if fits && fresh {
            captions.push(caption);
        }
    }
    captions.into_iter().map(|c| style(c, rng)).collect()
}

pub(super) fn style(mut caption: String, rng: &mut impl Rng) -> String {
    if rng.random_bool(0.6) {
        caption[..1].make_ascii_uppercase();
    }
    if rng.random_bool(0.6) {
        caption.push_str(" .");
    }
    caption
}
