//! Guest boot harness.
