//! The daemon `accelgated`.
