//! TEMPORARY compile stub; replaced by the hwsim branch.
#![allow(dead_code, unused_variables)]
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct PciError;
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct SriovError;
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct WindowError;
#[derive(Debug, thiserror::Error)]
pub enum FwUploadError {
    #[error("busy")]
    Busy,
    #[error("cancelled")]
    Cancelled,
    #[error("x")]
    Other,
}
pub const MAX_COUNT: u32 = 65536;
#[derive(Clone, Debug)]
pub struct HwRoot {
    root: PathBuf,
}
impl HwRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HwRoot { root: root.into() }
    }
    pub fn path(&self) -> &Path {
        &self.root
    }
}
#[derive(Debug)]
pub struct PciFunction {
    pub bdf: String,
    pub dir: PathBuf,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub driver: Option<String>,
}
pub struct BarInfo {
    pub start: u64,
    pub size: u64,
    pub is_memory: bool,
}
impl PciFunction {
    pub fn open(root: &HwRoot, bdf: &str) -> Result<Self, PciError> {
        Err(PciError)
    }
    pub fn bar(&self, n: u8) -> Result<BarInfo, PciError> {
        Err(PciError)
    }
    pub fn resource_path(&self, n: u8) -> PathBuf {
        PathBuf::new()
    }
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    U8,
    U16,
    U32,
    U64,
}
impl TryFrom<u8> for Width {
    type Error = WindowError;
    fn try_from(v: u8) -> Result<Self, WindowError> {
        Err(WindowError)
    }
}
impl Width {
    pub fn bytes(self) -> u64 {
        1
    }
    pub fn max_value(self) -> u64 {
        1
    }
}
pub struct SliceWindow;
impl SliceWindow {
    pub fn open(resource: &Path, offset: u64, size: u64) -> Result<Self, WindowError> {
        Err(WindowError)
    }
    pub fn size(&self) -> u64 {
        0
    }
    pub fn read(&self, offset: u64, count: u32, width: Width) -> Result<Vec<u64>, WindowError> {
        Err(WindowError)
    }
    pub fn write(&self, offset: u64, values: &[u64], width: Width) -> Result<(), WindowError> {
        Err(WindowError)
    }
    pub fn zero(&self, start: u64, end: u64) -> Result<(), WindowError> {
        Err(WindowError)
    }
}
pub struct Sriov;
impl Sriov {
    pub fn new(pf: &PciFunction) -> Result<Self, SriovError> {
        Err(SriovError)
    }
    pub fn total_vfs(&self) -> Result<u32, SriovError> {
        Err(SriovError)
    }
    pub fn num_vfs(&self) -> Result<u32, SriovError> {
        Err(SriovError)
    }
    pub fn set_num_vfs(&self, n: u32, timeout: Duration) -> Result<(), SriovError> {
        Err(SriovError)
    }
    pub fn vf(&self, i: u32) -> Result<PciFunction, SriovError> {
        Err(SriovError)
    }
}
pub struct FwUpload;
impl FwUpload {
    pub fn open(root: &HwRoot, name: &str) -> Result<Self, FwUploadError> {
        Err(FwUploadError::Other)
    }
    pub fn upload(
        &self,
        image: &[u8],
        progress: &mut dyn FnMut(f64),
        cancel: &AtomicBool,
        timeout: Duration,
    ) -> Result<(), FwUploadError> {
        Err(FwUploadError::Other)
    }
}
