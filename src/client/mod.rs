//! Client library: talk to `accelgated` over D-Bus.

pub mod proxy;
