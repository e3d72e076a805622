//! The daemon `accelgated`.
pub mod hw;
