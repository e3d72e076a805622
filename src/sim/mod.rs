//! TEMPORARY compile stub; replaced by the hwsim branch.
#![allow(dead_code, unused_variables)]
use std::path::Path;
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct SimError;
pub struct SimSpec;
impl SimSpec {
    pub fn standard() -> Self {
        SimSpec
    }
    pub fn scale(devices: u32, vfs: u32) -> Self {
        SimSpec
    }
}
pub fn build(dir: &Path, spec: &SimSpec) -> Result<(), SimError> {
    Err(SimError)
}
pub struct Emulator;
impl Emulator {
    pub fn start(dir: &Path) -> Result<Emulator, SimError> {
        Err(SimError)
    }
}
