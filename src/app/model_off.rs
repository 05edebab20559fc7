//! Model panel in a build without the `bert` feature (the browser page's): the settings
//! are kept (and remembered), and the panel says how to get it.

use crate::runtime::Gpu;

/// The model panel's inputs.
#[derive(Default)]
pub struct ModelState {
    /// Model directory.
    pub dir: String,
    /// The sentence to encode.
    pub text: String,
}

/// Says that this build has no BERT encoder.
pub(crate) fn model_ui(ui: &mut egui::Ui, _: &mut ModelState, _: &Gpu, _: bool, _: bool) {
    ui.label(
        "The Model panel runs BERT, which this build of longctx leaves out (feature `bert`): \
         run `longctx viz` from a default build.",
    );
}
