//! The daemon `accelgated`.
pub mod sandbox;
