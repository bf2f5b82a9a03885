//! Restricted-DMA pool model.
