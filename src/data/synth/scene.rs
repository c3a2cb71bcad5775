//! Scenes: which shapes, colours and sizes an image shows, and where, drawn from the
//! image's own random stream.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Small,
    Large,
}

pub(super) const SHAPES: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];
pub(super) const COLOURS: [Colour; 5] =
    [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Purple];
pub(super) const SIZES: [Size; 2] = [Size::Small, Size::Large];

impl Colour {
    pub(super) fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [215, 40, 40],
            Colour::Green => [40, 160, 60],
            Colour::Blue => [40, 80, 215],
            Colour::Yellow => [230, 195, 20],
            Colour::Purple => [140, 60, 180],
        }
    }

    pub(super) fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
        }
    }
}

/// One drawn shape. Positions are fractions of the image side, so scenes do not depend on
/// the pixel size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub x: f32,
    pub y: f32,
}

/// Where a group of shapes lines up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
    Top,
    Bottom,
}

/// What an image shows; captions are derived from it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scene {
    /// One shape in a cell of a 3x3 grid (`col`, `row` in 0..3).
    Single { object: Object, col: usize, row: usize },
    /// Two different shapes; `first` is above `second` (vertical) or left of it.
    Pair { first: Object, second: Object, vertical: bool },
    /// Two or three identical shapes along one side.
    Group { objects: Vec<Object>, side: Side },
}

impl Scene {
    pub fn objects(&self) -> Vec<Object> {
        match self {
            Scene::Single { object, .. } => vec![*object],
            Scene::Pair { first, second, .. } => vec![*first, *second],
            Scene::Group { objects, .. } => objects.clone(),
        }
    }
}

/// The per-image random stream: blake3("pipe-synth", seed, index) as a ChaCha8 seed.
pub(super) fn image_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"pipe-synth");
    hasher.update(&seed.to_le_bytes());
    hasher.update(&(index as u64).to_le_bytes());
    ChaCha8Rng::from_seed(*hasher.finalize().as_bytes())
}

pub(super) fn jitter(rng: &mut impl Rng, amount: f32) -> f32 {
    rng.random_range(-amount..=amount)
}

pub(super) fn pick<T: Copy>(rng: &mut impl Rng, items: &[T]) -> T {
    *items.choose(rng).expect("non-empty choice")
}

/// Cell centres of the 3x3 grid, far enough from the edges for a large shape.
pub(super) const GRID: [f32; 3] = [0.22, 0.5, 0.78];

pub fn sample_scene(rng: &mut impl Rng) -> Scene {
    match rng.random_range(0..20) {
        0..7 => sample_single(rng),
        7..15 => sample_pair(rng),
        _ => sample_group(rng),
    }
}

pub(super) fn sample_object(rng: &mut impl Rng, x: f32, y: f32) -> Object {
    Object { shape: pick(rng, &SHAPES), colour: pick(rng, &COLOURS), size: pick(rng, &SIZES), x, y }
}

pub(super) fn sample_single(rng: &mut impl Rng) -> Scene {
    let (col, row) = (rng.random_range(0..3), rng.random_range(0..3));
    let (x, y) = (GRID[col] + jitter(rng, 0.04), GRID[row] + jitter(rng, 0.04));
    Scene::Single { object: sample_object(rng, x, y), col, row }
}

pub(super) fn sample_pair(rng: &mut impl Rng) -> Scene {
    let vertical = rng.random_bool(0.5);
    let across = rng.random_range(0.3..0.7);
    let (near, far) = (0.27 + jitter(rng, 0.04), 0.73 + jitter(rng, 0.04));
    let (a, b) = if vertical {
        ((across + jitter(rng, 0.08), near), (across + jitter(rng, 0.08), far))
    } else {
        ((near, across + jitter(rng, 0.08)), (far, across + jitter(rng, 0.08)))
    };
    let first = sample_object(rng, a.0, a.1);
    let mut second = sample_object(rng, b.0, b.1);
    // Two shapes of the same colour and kind would make "a red circle above a red circle".
    while (second.shape, second.colour) == (first.shape, first.colour) {
        second.colour = pick(rng, &COLOURS);
    }
    Scene::Pair { first, second, vertical }
}

pub(super) fn sample_group(rng: &mut impl Rng) -> Scene {
    let count = if rng.random_bool(0.65) { 2 } else { 3 };
    let side = pick(rng, &[Side::Left, Side::Right, Side::Top, Side::Bottom]);
    // Three large shapes do not fit along one side of the image.
    let size = if count == 2 { pick(rng, &SIZES) } else { Size::Small };
    let (shape, colour) = (pick(rng, &SHAPES), pick(rng, &COLOURS));
    let edge = match side {
        Side::Left | Side::Top => 0.2,
        Side::Right | Side::Bottom => 0.8,
    } + jitter(rng, 0.03);
    let along: &[f32] = if count == 2 { &[0.3, 0.7] } else { &[0.2, 0.5, 0.8] };
    let objects = along
        .iter()
        .map(|&t| {
            let t = t + jitter(rng, 0.03);
            let (x, y) = if matches!(side, Side::Left | Side::Right) { (edge, t) } else { (t, edge) };
            Object { shape, colour, size, x, y }
        })
        .collect();
    Scene::Group { objects, side }
}
