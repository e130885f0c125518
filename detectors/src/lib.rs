//! Detectors for dfbench: backbones, the detector head, training methods, optimizers and the
//! gradient utilities they share. Everything here is first-order (candle has no double backward).

pub mod backbones;
pub mod batch;
pub mod config;
pub mod device;
pub mod gradvec;
pub mod layers;
pub mod params;
pub mod pth;
pub mod reference_formula;
pub mod losses;
pub mod methods;
pub mod model;
pub mod ops;
pub mod optim;
pub mod schedule;
pub mod trace;
pub mod weights;

pub use batch::{Batch, StepInput};
pub use model::{Backbone, Mode};
pub use params::{Init, ParamBuilder, ParamStore};
