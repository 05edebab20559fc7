//! The attention contract (`docs/DESIGN.md` §1) as types and the f64 oracle that defines
//! it: shapes, positions, masks, ALiBi, block maps, FLOP counts. No GPU here; every layer
//! above follows it.
//!
//! Dependencies point one way inside the layer too: `shape` ← [`mask`], [`mods`], [`positions`] ← [`spec`] ←
//! [`blockmap`] ← [`reference`](mod@reference).

pub mod blockmap;
pub mod dsa;
pub mod inputs;
pub mod mask;
pub mod mods;
pub mod nsa;
pub mod paged;
pub mod positions;
pub mod reference;
pub mod selection;
mod shape;
pub mod spec;

pub use shape::{AttnShape, UNBOUNDED, Window};
