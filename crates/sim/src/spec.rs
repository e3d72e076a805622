//! What a simulated host contains. The spec is also the manifest (`sim.json`) that the
//! emulator reads, so tree builder and emulator agree on every path and register.

use serde::{Deserialize, Serialize};

/// Device-wide registers at the start of BAR0.
pub const REG_ID: u64 = 0x0;
pub const REG_PERSONALITY_TAG: u64 = 0x10;
/// Region registers, relative to the region window.
pub const REG_REGION_ID: u64 = 0x0;
pub const REG_IMAGE_STATUS: u64 = 0x08;
pub const REG_IMAGE_TAG: u64 = 0x10;

/// A simulated host: physical functions and firmware-upload entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimSpec {
    pub functions: Vec<PfSpec>,
    pub fw_uploads: Vec<FwEntrySpec>,
    /// MTD partitions (`sys/class/mtd/mtd<N>`, `dev/mtd<N>`), numbered in this order.
    #[serde(default)]
    pub mtds: Vec<MtdSpec>,
    /// Kernel drivers that claim a function's BARs when they bind (`pci_request_regions`), as
    /// the VF drivers of real NICs do: binding one revokes every mapping of the function's
    /// `resourceN` and makes a new mmap fail until it is unbound, as the kernel does under
    /// CONFIG_IO_STRICT_DEVMEM (see `Tree::bind`). Any other name binds and claims nothing
    /// (as `pci-stub` and `pci-pf-stub` do).
    #[serde(default)]
    pub bar_claiming_drivers: Vec<String>,
}

/// The driver of the standard host's simulated VFs: it claims their BAR when bound.
pub const SIM_VF_DRIVER: &str = "accelgate-simvf";

/// One MTD partition: a NOR-like flash the daemon reaches as `dev/mtd<N>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtdSpec {
    pub name: String,
    pub size: u64,
    pub erase_size: u64,
}

/// One physical function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PfSpec {
    pub name: String,
    pub bdf: String,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub bar0_size: u64,
    /// Value of the u32 ID register at BAR0 0x0.
    pub id: u32,
    pub regions: Vec<RegionSpec>,
    pub sriov: Option<VfSpec>,
    /// The kernel driver bound to the function when the host comes up; `None` leaves it
    /// without one (as QEMU's nvme in the rig's guest), so SR-IOV needs `pci-pf-stub`.
    #[serde(default = "sim_driver")]
    pub driver: Option<String>,
}

/// The driver every simulated function had before specs could name one.
pub const SIM_DRIVER: &str = "accelgate-sim";

fn sim_driver() -> Option<String> {
    Some(SIM_DRIVER.into())
}

/// A region window inside BAR0 (its REGION_ID is `0xacce_0000 | index`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSpec {
    pub offset: u64,
    pub size: u64,
}

/// SR-IOV capability of a PF and what its VFs look like.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfSpec {
    pub total: u32,
    pub device: u16,
    pub class: u32,
    pub bar0_size: u64,
    /// VF i has ID register `id_base | i`.
    pub id_base: u32,
    /// The SR-IOV capability's First VF Offset and VF Stride: VF i's routing ID is the PF's
    /// plus `first_offset + i * stride` (QEMU's igb: 128 and 2).
    #[serde(default = "one")]
    pub first_offset: u32,
    #[serde(default = "one")]
    pub stride: u32,
}

fn one() -> u32 {
    1
}

/// One firmware-upload entry and what completing an upload does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwEntrySpec {
    pub name: String,
    /// The PF (by PCI address) the effect applies to.
    pub bdf: String,
    pub effect: FwEffect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FwEffect {
    /// Sets IMAGE_STATUS/IMAGE_TAG of region `n`.
    Region(u32),
    /// Sets PERSONALITY_TAG.
    Personality,
    /// A two-slot firmware flash (see `sim::flash`): the upload goes to the staging slot.
    Flash,
    /// What the kernel's `test_firmware` driver does with an upload: it keeps the bytes
    /// (`<root>/test_firmware/<entry>`, the simulated `upload_read`), refuses more than
    /// [`TEST_FIRMWARE_MAX`] bytes (`preparing:invalid-file-size`), and an image reading
    /// `inject:<progress>:<error>` fails at that progress with that error (`user-abort`
    /// waits there for a cancel).
    TestFirmware,
}

/// The largest upload `test_firmware` takes (TEST_UPLOAD_MAX_SIZE in lib/test_firmware.c).
pub const TEST_FIRMWARE_MAX: usize = 2048;

impl SimSpec {
    /// The standard host of simspec.md: `fpga0` with two regions and `nic0` with 8 VFs.
    pub fn standard() -> Self {
        let fpga_bdf = "0000:3b:00.0".to_string();
        let fpga = PfSpec {
            name: "fpga0".into(),
            bdf: fpga_bdf.clone(),
            vendor: 0xacce,
            device: 0x0f01,
            class: 0x12_0000,
            bar0_size: 1 << 20,
            id: 0xacce_f001,
            regions: vec![
                RegionSpec {
                    offset: 0x1_0000,
                    size: 0x1_0000,
                },
                RegionSpec {
                    offset: 0x2_0000,
                    size: 0x1_0000,
                },
            ],
            sriov: None,
            driver: sim_driver(),
        };
        let entry = |name: &str, bdf: &str, effect| FwEntrySpec {
            name: name.into(),
            bdf: bdf.into(),
            effect,
        };
        let mut fw_uploads = vec![
            entry("fpga0-region0", &fpga_bdf, FwEffect::Region(0)),
            entry("fpga0-region1", &fpga_bdf, FwEffect::Region(1)),
            entry("fpga0-flash", &fpga_bdf, FwEffect::Flash),
        ];
        let mut nic = nic_pf(0, "0000:5e:00.0".into(), 8);
        // VFs laid out like QEMU's igb (8 VFs at offset 128, stride 2: 5e:10.0, 5e:10.2, ...);
        // the scale host keeps 1 and 1 to fit 255 VFs on the PF's bus.
        if let Some(vfs) = nic.sriov.as_mut() {
            vfs.first_offset = 128;
            vfs.stride = 2;
        }
        fw_uploads.push(entry("nic0-personality", &nic.bdf, FwEffect::Personality));
        SimSpec {
            functions: vec![fpga, nic],
            fw_uploads,
            mtds: Vec::new(),
            bar_claiming_drivers: vec![SIM_VF_DRIVER.into()],
        }
    }

    /// `devices` NIC-like PFs `nic0..` at `0000:BB:00.0` (BB = 0x10 + i), each with `vfs`
    /// VFs possible and a `nic<i>-personality` upload entry.
    /// `devices` NICs with up to `vfs` VFs each, at [`scale_bdf`]'s addresses.
    pub fn scale(devices: u32, vfs: u32) -> Self {
        let functions: Vec<PfSpec> = (0..devices).map(|i| nic_pf(i, scale_bdf(i), vfs)).collect();
        let fw_uploads = functions
            .iter()
            .map(|pf| FwEntrySpec {
                name: format!("{}-personality", pf.name),
                bdf: pf.bdf.clone(),
                effect: FwEffect::Personality,
            })
            .collect();
        SimSpec {
            functions,
            fw_uploads,
            mtds: Vec::new(),
            bar_claiming_drivers: Vec::new(),
        }
    }

    /// The kernel rig's guest (rig/run, rig/guest/init) as the simulator can have it: the
    /// same PCI addresses, IDs, SR-IOV layouts, drivers, upload entries and MTD partitions,
    /// so that rig/guest/policy.toml and rig/guest/scenarios.sh serve both backends.
    pub fn rig() -> Self {
        let edu = PfSpec {
            name: "edu".into(),
            bdf: "0000:00:04.0".into(),
            vendor: 0x1234,
            device: 0x11e8,
            class: 0x00ff_0000,
            bar0_size: 1 << 20,
            id: 0x0100_00ed,
            regions: Vec::new(),
            sriov: None,
            driver: None,
        };
        // QEMU's nvme with sriov_max_vfs=2: VFs at functions 1 and 2, 16 KiB BAR0 each; the
        // guest has no nvme driver.
        let nvme = PfSpec {
            name: "nvme".into(),
            bdf: "0000:01:00.0".into(),
            vendor: 0x1b36,
            device: 0x0010,
            class: 0x01_0802,
            bar0_size: 16 << 10,
            id: 0x0020_0000,
            regions: Vec::new(),
            sriov: Some(VfSpec {
                total: 2,
                device: 0x0010,
                class: 0x01_0802,
                bar0_size: 16 << 10,
                id_base: 0,
                first_offset: 1,
                stride: 1,
            }),
            driver: None,
        };
        // QEMU's igb (82576): 8 VFs at offset 128, stride 2; the PF is bound to igb.
        let igb = |bdf: &str| PfSpec {
            name: "igb".into(),
            bdf: bdf.into(),
            vendor: 0x8086,
            device: 0x10c9,
            class: 0x02_0000,
            bar0_size: 128 << 10,
            id: 0,
            regions: Vec::new(),
            sriov: Some(VfSpec {
                total: 8,
                device: 0x10ca,
                class: 0x02_0000,
                bar0_size: 16 << 10,
                id_base: 0,
                first_offset: 128,
                stride: 2,
            }),
            driver: Some("igb".into()),
        };
        let edu_bdf = edu.bdf.clone();
        let fw_uploads = ["rig-region0", "rig-personality", "rig-upload"]
            .into_iter()
            .map(|name| FwEntrySpec {
                name: name.into(),
                bdf: edu_bdf.clone(),
                effect: FwEffect::TestFirmware,
            })
            .collect();
        let mtd = |name: &str, size: u64| MtdSpec {
            name: name.into(),
            size,
            erase_size: 64 << 10,
        };
        SimSpec {
            functions: vec![edu, nvme, igb("0000:02:00.0"), igb("0000:03:00.0")],
            fw_uploads,
            mtds: vec![
                mtd("nvmefw-a", 0x10_0000),
                mtd("nvmefw-b", 0x10_0000),
                mtd("nvmefw-sel", 0x2_0000),
                mtd("edufw-a", 0x7_0000),
                mtd("edufw-b", 0x7_0000),
                mtd("edufw-sel", 0x2_0000),
            ],
            // igb's VF driver (the rig's policy names it as igb0's revoke_driver).
            bar_claiming_drivers: vec!["igbvf".into()],
        }
    }
}

fn nic_pf(index: u32, bdf: String, total_vfs: u32) -> PfSpec {
    PfSpec {
        name: format!("nic{index}"),
        bdf,
        vendor: 0xacce,
        device: 0x0e01,
        class: 0x02_0000,
        bar0_size: 64 << 10,
        id: 0xacce_e001,
        regions: Vec::new(),
        sriov: Some(VfSpec {
            total: total_vfs,
            device: 0x0e02,
            class: 0x02_0000,
            bar0_size: 16 << 10,
            id_base: 0xacce_e100,
            first_offset: 1,
            stride: 1,
        }),
        driver: sim_driver(),
    }
}

/// PCI address of the scale host's PF `i`: one PF per bus from bus 0x10 (each PF's VFs take
/// its bus's other device numbers), 240 buses per PCI domain, the next domain after that.
pub fn scale_bdf(i: u32) -> String {
    format!("{:04x}:{:02x}:00.0", i / 0xf0, 0x10 + i % 0xf0)
}
