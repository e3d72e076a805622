//! The plugin as the kubelet sees it, without a cluster: this test registers it over its
//! registration socket, prepares and unprepares claims over gRPC, against the real daemon on
//! the simulated host and a loopback fake of the Kubernetes API.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use accelgate_dra::proto::dra::dra_plugin_client::DraPluginClient;
use accelgate_dra::proto::dra::{
    Claim, NodePrepareResourceResponse, NodePrepareResourcesRequest, NodeUnprepareResourcesRequest,
};
use accelgate_dra::proto::registration::registration_client::RegistrationClient;
use accelgate_dra::proto::registration::InfoRequest;
use common::fake_kube::FakeKube;
use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const DRIVER: &str = "accelgate.org";
const NODE: &str = "node1";

/// The simulated policy plus a role for the plugin's user (assign and release slices, load
/// images into them, on every slice of the node) and a tenant role for the Pods' user.
fn policy(dir: &Path) -> PathBuf {
    let mut text = fs::read_to_string(repo_path("policy/simulated.toml")).unwrap();
    text.push_str(&format!(
        "\n[[role]]\nid = \"kubernetes\"\nusers = [\"{PLUGIN_USER}\"]\noperations = [\"slice.assign\", \"slice.program\", \"slice.read\"]\n\n[[role]]\nid = \"pod_tenant\"\nusers = [\"{TENANT_USER}\"]\noperations = [\"slice.read\", \"slice.write\"]\nscope = \"assigned\"\n"
    ));
    let p = dir.join("policy.toml");
    fs::write(&p, text).unwrap();
    p
}

struct Dirs {
    registry: PathBuf,
    plugins: PathBuf,
    cdi: PathBuf,
    images: PathBuf,
    kubeconfig: PathBuf,
}

fn start_plugin(dir: &Path, d: &Dirs, bus: &TestBus) -> Proc {
    let setpriv = require_binary("setpriv", "util-linux");
    let log = dir.join("plugin.log");
    let child = Command::new(setpriv)
        .args([
            &format!("--reuid={PLUGIN_USER}"),
            &format!("--regid={PLUGIN_USER}"),
            "--init-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_accelgate-dra"))
        .args(["--node-name", NODE, "--driver-name", DRIVER])
        .arg("--plugins-registry")
        .arg(&d.registry)
        .arg("--plugins")
        .arg(&d.plugins)
        .arg("--cdi-dir")
        .arg(&d.cdi)
        .arg("--image-dir")
        .arg(&d.images)
        .args(["--bus", &bus.address])
        .arg("--bus-socket")
        .arg(&bus.socket)
        .arg("--sysfs")
        .arg(dir.join("sim/sys"))
        .env("KUBECONFIG", &d.kubeconfig)
        .env("ACCELGATE_LOG", "info")
        .env_remove("ACCELGATE_BUS")
        .stdout(Stdio::null())
        .stderr(
            fs::File::options()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        )
        .spawn()
        .expect("cannot start accelgate-dra");
    let mut p = Proc {
        child: Some(child),
        log,
    };
    // Both sockets accept connections (a socket file left by a killed plugin refuses them).
    let reg = d.registry.join(format!("{DRIVER}-reg.sock"));
    let dra = d.plugins.join(DRIVER).join("dra.sock");
    wait_for(30, "the plugin's sockets", || {
        p.assert_alive("accelgate-dra");
        let up = |s: &Path| std::os::unix::net::UnixStream::connect(s).is_ok();
        (up(&reg) && up(&dra)).then_some(())
    });
    p
}

async fn channel(path: PathBuf) -> tonic::transport::Channel {
    tonic::transport::Endpoint::try_from("http://kubelet.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("cannot connect to the plugin's socket")
}

fn claim_fixture(
    uid: &str,
    name: &str,
    device: &str,
    tenant_uid: u32,
    image: Option<&str>,
) -> Value {
    let mut params = json!({
        "apiVersion": "accelgate.org/v1alpha1",
        "kind": "SliceConfig",
        "tenant": { "uid": tenant_uid },
    });
    if let Some(i) = image {
        params["image"] = json!(i);
    }
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": { "name": name, "namespace": "demo", "uid": uid },
        "spec": {},
        "status": { "allocation": { "devices": {
            "results": [{ "request": "slice", "driver": DRIVER, "pool": NODE, "device": device }],
            "config": [{ "source": "FromClaim", "requests": ["slice"],
                         "opaque": { "driver": DRIVER, "parameters": params } }]
        }}}
    })
}

fn claim(uid: &str, name: &str) -> Claim {
    Claim {
        namespace: "demo".into(),
        uid: uid.into(),
        name: name.into(),
    }
}

async fn prepare(
    client: &mut DraPluginClient<tonic::transport::Channel>,
    c: Claim,
) -> NodePrepareResourceResponse {
    let uid = c.uid.clone();
    let resp = client
        .node_prepare_resources(NodePrepareResourcesRequest { claims: vec![c] })
        .await
        .expect("NodePrepareResources")
        .into_inner();
    assert_eq!(resp.claims.len(), 1, "one entry per claim");
    resp.claims
        .get(&uid)
        .cloned()
        .expect("an entry for the claim")
}

async fn unprepare(client: &mut DraPluginClient<tonic::transport::Channel>, c: Claim) -> String {
    let uid = c.uid.clone();
    let resp = client
        .node_unprepare_resources(NodeUnprepareResourcesRequest { claims: vec![c] })
        .await
        .expect("NodeUnprepareResources")
        .into_inner();
    resp.claims
        .get(&uid)
        .expect("an entry for the claim")
        .error
        .clone()
}

/// Resolves a fully qualified CDI id against the spec files in `dir` as a runtime would:
/// the file whose kind matches, validated by the container-device-interface crate, and the
/// device of that name in it. Returns the device's containerEdits.
fn resolve_cdi(dir: &Path, id: &str) -> (String, Value) {
    let (kind, name) = id.split_once('=').expect("qualified CDI id");
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let spec: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        if spec["kind"] != kind {
            continue;
        }
        let raw: container_device_interface::specs::config::Spec =
            serde_json::from_value(spec.clone()).unwrap();
        container_device_interface::spec::new_spec(&raw, &path, 0)
            .unwrap_or_else(|e| panic!("{} is not a valid CDI spec: {e:#}", path.display()));
        for d in spec["devices"].as_array().unwrap() {
            if d["name"] == name {
                return (
                    spec["cdiVersion"].as_str().unwrap().to_owned(),
                    d["containerEdits"].clone(),
                );
            }
        }
    }
    panic!("no CDI spec in {} defines {id}", dir.display());
}

fn programs(dir: &Path) -> usize {
    audit(dir)
        .iter()
        .filter(|r| r["operation"] == "slice.program" && r["decision"] == "allow")
        .count()
}

fn slice_json(address: &str, target: &str) -> Value {
    let (ok, out, err) = ctl(address, "root", &["--json", "show", target]);
    assert!(ok, "accelctl show {target}: {err}");
    serde_json::from_str(&out).unwrap()
}

/// fpga0/region0's first scratch register, read as root.
fn scratch(address: &str) -> u64 {
    let (ok, out, err) = ctl(
        address,
        "root",
        &["--json", "read", "fpga0/region0", "0x100", "--width", "4"],
    );
    assert!(ok, "accelctl read: {err}");
    let regs: Value = serde_json::from_str(&out).unwrap();
    regs[0]["value"]
        .as_u64()
        .unwrap_or_else(|| panic!("no register value in {out}"))
}

fn last_devices(kube: &FakeKube) -> Option<(i64, Vec<Value>)> {
    let w = kube.slice_writes();
    let last = w.last()?;
    Some((
        last["spec"]["pool"]["generation"].as_i64().unwrap(),
        last["spec"]["devices"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    ))
}

fn device<'a>(devices: &'a [Value], name: &str) -> Option<&'a Value> {
    devices.iter().find(|d| d["name"] == name)
}

/// Whether podman (4.3 in Debian 12) resolves the id from the plugin's spec and applies its
/// edits: `podman create --device <id>` then `podman init`, and the container's OCI
/// `config.json` holds the env and the bus mount. podman 4.3 reads CDI specs only from
/// /etc/cdi and /var/run/cdi, so the spec is copied there for the check. The image is an empty
/// one imported from a tar (no registry). In VMs whose cgroup layout crun refuses, `podman
/// init` writes config.json and then fails to create the container; config.json is what is
/// checked, and init's own result is printed.
fn podman_applies(dir: &Path, spec: &Path, cdi_id: &str, bus_socket: &Path) {
    let podman = require_binary("podman", "podman");
    let run = |args: &[&str]| {
        let out = Command::new(&podman)
            .args(args)
            .output()
            .expect("cannot run podman");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    };
    let runtime_dir = Path::new("/var/run/cdi");
    fs::create_dir_all(runtime_dir).unwrap();
    let copy = runtime_dir.join(format!("accelgate-dra-test-{}.json", std::process::id()));
    fs::copy(spec, &copy).unwrap();
    struct Cleanup(PathBuf, PathBuf, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.1);
            let _ = Command::new(&self.0).args(["rm", "-f", &self.2]).output();
        }
    }
    let name = format!("accelgate-dra-test-{}", std::process::id());
    let _cleanup = Cleanup(podman.clone(), copy, name.clone());
    let image = "localhost/accelgate-dra-test-empty:1";
    if !run(&["image", "exists", image]).0 {
        let root = dir.join("empty-root");
        fs::create_dir_all(&root).unwrap();
        let tar = dir.join("empty.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "cannot make the empty image's tar");
        let (ok, _, err) = run(&["import", "-q", &tar.display().to_string(), image]);
        assert!(ok, "podman import: {err}");
    }
    let (ok, _, err) = run(&[
        "create",
        "--name",
        &name,
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--device",
        cdi_id,
        image,
        "/true",
    ]);
    assert!(ok, "podman create --device {cdi_id}: {err}");
    let (init_ok, _, init_err) = run(&["init", &name]);
    eprintln!(
        "podman init: {}",
        if init_ok {
            "ok".to_owned()
        } else {
            init_err.clone()
        }
    );
    assert!(
        !init_err.contains("CDI"),
        "podman could not resolve {cdi_id}: {init_err}"
    );
    let (_, id, _) = run(&["inspect", &name, "--format", "{{.Id}}"]);
    let (_, graph_root, _) = run(&["info", "--format", "{{.Store.GraphRoot}}"]);
    let config =
        Path::new(&graph_root).join(format!("overlay-containers/{id}/userdata/config.json"));
    let text = fs::read_to_string(&config).unwrap_or_else(|e| {
        panic!(
            "podman init wrote no {} ({e}); init said: {init_err}",
            config.display()
        )
    });
    let oci: Value = serde_json::from_str(&text).unwrap();
    let env: Vec<&str> = oci["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(env.contains(&"ACCELGATE_SLICE=fpga0/region0"), "{env:?}");
    assert!(
        env.contains(&"ACCELGATE_BUS=unix:path=/run/dbus/system_bus_socket"),
        "{env:?}"
    );
    let mounted = oci["mounts"].as_array().unwrap().iter().any(|m| {
        m["destination"] == "/run/dbus/system_bus_socket"
            && m["source"] == bus_socket.display().to_string()
    });
    assert!(mounted, "no bus mount in {}", oci["mounts"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plays_the_kubelet() {
    ensure_users();
    let dir = test_dir("kubelet");
    let bus = TestBus::start(&dir);
    let policy = policy(&dir);
    let _daemon = start_daemon(&bus, &dir, &policy);
    let kube = FakeKube::start();
    let d = Dirs {
        registry: owned_dir(&dir.join("plugins_registry"), PLUGIN_USER),
        plugins: owned_dir(&dir.join("plugins"), PLUGIN_USER),
        cdi: owned_dir(&dir.join("cdi"), PLUGIN_USER),
        images: dir.join("images"),
        kubeconfig: dir.join("kubeconfig"),
    };
    kube.write_kubeconfig(&d.kubeconfig);
    fs::create_dir_all(&d.images).unwrap();
    let image: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(d.images.join("app.bin"), &image).unwrap();
    let image_sha: String = Sha256::digest(&image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tenant_uid = uid_of(TENANT_USER);

    let mut plugin = start_plugin(&dir, &d, &bus);

    // Registration, as the kubelet's plugin watcher does it.
    let mut reg =
        RegistrationClient::new(channel(d.registry.join(format!("{DRIVER}-reg.sock"))).await);
    let info = reg
        .get_info(InfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    assert_eq!(info.r#type, "DRAPlugin");
    assert_eq!(info.name, DRIVER);
    let endpoint = d.plugins.join(DRIVER).join("dra.sock");
    assert_eq!(info.endpoint, endpoint.display().to_string());
    assert!(
        info.supported_versions.iter().any(|v| v == "v1.DRAPlugin"),
        "{:?}",
        info.supported_versions
    );

    // Publication: the free slices of the node, one device each.
    let (generation0, devices) = wait_for(30, "a ResourceSlice with fpga0's regions", || {
        let (g, devs) = last_devices(&kube)?;
        (device(&devs, "fpga0-region0").is_some() && device(&devs, "fpga0-region1").is_some())
            .then_some((g, devs))
    });
    let written = kube.slice_writes();
    let slice = written.last().unwrap();
    assert_eq!(slice["metadata"]["name"], format!("{NODE}-{DRIVER}"));
    assert_eq!(slice["spec"]["driver"], DRIVER);
    assert_eq!(slice["spec"]["nodeName"], NODE);
    assert_eq!(slice["spec"]["pool"]["name"], NODE);
    let r0 = device(&devices, "fpga0-region0").unwrap();
    assert_eq!(
        r0["attributes"]["resource.kubernetes.io/pciBusID"]["string"],
        "0000:3b:00.0"
    );
    assert_eq!(r0["attributes"]["kind"]["string"], "fpga");
    assert_eq!(r0["attributes"]["sliceKind"]["string"], "region");
    assert!(
        r0["attributes"].get("imageSha256").is_none(),
        "no image loaded yet"
    );

    // The daemon's signals move the publication: 2 VFs appear as devices, generation grows.
    let (ok, _, err) = ctl(&bus.address, "root", &["vfs", "nic0", "2"]);
    assert!(ok, "accelctl vfs: {err}");
    let generation1 = wait_for(30, "the VFs in the ResourceSlice", || {
        let (g, devs) = last_devices(&kube)?;
        (device(&devs, "nic0-vf1").is_some()).then_some(g)
    });
    assert!(
        generation1 > generation0,
        "generation {generation1} after {generation0}"
    );

    let mut dra = DraPluginClient::new(channel(endpoint.clone()).await);

    // A VF bound to vfio-pci (the simulated sysfs says so) gets its /dev/vfio nodes; a uid
    // that begins with a letter keeps the spec at cdiVersion 0.3.0.
    let vf_dir =
        fs::canonicalize(dir.join("sim/sys/bus/pci/devices/0000:5e:00.0/virtfn0")).unwrap();
    let _ = fs::remove_file(vf_dir.join("driver"));
    std::os::unix::fs::symlink("../../../bus/pci/drivers/vfio-pci", vf_dir.join("driver")).unwrap();
    std::os::unix::fs::symlink(
        "../../../kernel/iommu_groups/42",
        vf_dir.join("iommu_group"),
    )
    .unwrap();
    let uid_v = "e0e0e0e0-1111-4222-8333-777777777777";
    kube.put_claim(claim_fixture(
        uid_v, "claim-vf", "nic0-vf0", tenant_uid, None,
    ));
    let v = prepare(&mut dra, claim(uid_v, "claim-vf")).await;
    assert_eq!(v.error, "", "{}", plugin.log_text());
    let (version, edits) = resolve_cdi(&d.cdi, &v.devices[0].cdi_device_ids[0]);
    assert_eq!(version, "0.3.0");
    let nodes: Vec<&str> = edits["deviceNodes"]
        .as_array()
        .expect("device nodes")
        .iter()
        .map(|n| n["path"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["/dev/vfio/vfio", "/dev/vfio/42"]);
    assert_eq!(unprepare(&mut dra, claim(uid_v, "claim-vf")).await, "");
    assert_eq!(slice_json(&bus.address, "nic0/vf0")["tenant"], "");

    // A uid beginning with a digit: its CDI device name needs cdiVersion 0.5.0.
    let uid_a = "0a0a0a0a-1111-4222-8333-444444444444";
    kube.put_claim(claim_fixture(
        uid_a,
        "claim-a",
        "fpga0-region0",
        tenant_uid,
        Some("app.bin"),
    ));
    let a = prepare(&mut dra, claim(uid_a, "claim-a")).await;
    assert_eq!(a.error, "", "prepare failed:\n{}", plugin.log_text());
    assert_eq!(a.devices.len(), 1);
    assert_eq!(a.devices[0].device_name, "fpga0-region0");
    assert_eq!(a.devices[0].pool_name, NODE);
    let cdi_id = format!("accelgate.org/slice={uid_a}-fpga0-region0");
    assert_eq!(a.devices[0].cdi_device_ids, vec![cdi_id.clone()]);
    let (version, edits) = resolve_cdi(&d.cdi, &cdi_id);
    assert_eq!(
        version, "0.5.0",
        "the lowest version for a name that begins with a digit"
    );
    let env: Vec<&str> = edits["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"ACCELGATE_SLICE=fpga0/region0"), "{env:?}");
    assert!(
        env.contains(&"ACCELGATE_BUS=unix:path=/run/dbus/system_bus_socket"),
        "{env:?}"
    );
    assert_eq!(
        edits["mounts"][0]["hostPath"],
        bus.socket.display().to_string()
    );
    assert_eq!(
        edits["mounts"][0]["containerPath"],
        "/run/dbus/system_bus_socket"
    );
    podman_applies(
        &dir,
        &d.cdi.join(format!("accelgate-{uid_a}.json")),
        &cdi_id,
        &bus.socket,
    );

    // The daemon did it: the slice is the tenant's and holds the image.
    let shown = slice_json(&bus.address, "fpga0/region0");
    assert_eq!(shown["tenant"], format!("user:{TENANT_USER}"), "{shown}");
    assert_eq!(shown["image_sha256"], image_sha, "{shown}");
    assert_eq!(programs(&dir), 1);
    // ... and the tenant can use it through the bus the spec mounts.
    let (ok, _, err) = ctl(
        &bus.address,
        TENANT_USER,
        &["write", "fpga0/region0", "0x100", "0xcafe", "--width", "4"],
    );
    assert!(ok, "tenant write: {err}");
    assert_eq!(scratch(&bus.address), 0xcafe);
    // The loaded image is published.
    wait_for(30, "imageSha256 in the ResourceSlice", || {
        let (_, devs) = last_devices(&kube)?;
        (device(&devs, "fpga0-region0")?["attributes"]["imageSha256"]["string"]
            == image_sha.as_str())
        .then_some(())
    });

    // A repeat changes nothing and loads nothing.
    let spec_path = d.cdi.join(format!("accelgate-{uid_a}.json"));
    let spec_before = fs::read(&spec_path).unwrap();
    let mtime_before = fs::metadata(&spec_path).unwrap().modified().unwrap();
    let again = prepare(&mut dra, claim(uid_a, "claim-a")).await;
    assert_eq!(again, a);
    assert_eq!(programs(&dir), 1, "the image was loaded again");
    assert_eq!(
        fs::metadata(&spec_path).unwrap().modified().unwrap(),
        mtime_before
    );

    // So does a repeat after the plugin is killed and started again.
    plugin.kill();
    let mut plugin = start_plugin(&dir, &d, &bus);
    let mut dra = DraPluginClient::new(channel(endpoint.clone()).await);
    let after_restart = prepare(&mut dra, claim(uid_a, "claim-a")).await;
    assert_eq!(after_restart, a, "plugin log:\n{}", plugin.log_text());
    assert_eq!(
        programs(&dir),
        1,
        "the image was loaded again after a restart"
    );
    assert_eq!(fs::read(&spec_path).unwrap(), spec_before);

    // A slice another claim holds is refused, and nothing changes for the holder.
    let uid_b = "b0b0b0b0-1111-4222-8333-555555555555";
    kube.put_claim(claim_fixture(
        uid_b,
        "claim-b",
        "fpga0-region0",
        tenant_uid + 1,
        None,
    ));
    let b = prepare(&mut dra, claim(uid_b, "claim-b")).await;
    assert!(
        b.error.contains("held by claim"),
        "expected a refusal, got {b:?}"
    );
    assert!(!d.cdi.join(format!("accelgate-{uid_b}.json")).exists());
    assert_eq!(
        slice_json(&bus.address, "fpga0/region0")["tenant"],
        format!("user:{TENANT_USER}")
    );
    // Unpreparing the refused claim must not release the holder's slice.
    assert_eq!(unprepare(&mut dra, claim(uid_b, "claim-b")).await, "");
    assert_eq!(
        slice_json(&bus.address, "fpga0/region0")["tenant"],
        format!("user:{TENANT_USER}")
    );

    // A slice held by a tenant outside Kubernetes is refused too (the daemon says Busy).
    let (ok, _, err) = ctl(
        &bus.address,
        "root",
        &["assign", "fpga0/region1", TENANT_USER],
    );
    assert!(ok, "{err}");
    // Assigned by hand, it leaves the ResourceSlice: the scheduler is not offered it.
    wait_for(30, "fpga0-region1 to leave the ResourceSlice", || {
        let (_, devs) = last_devices(&kube)?;
        device(&devs, "fpga0-region1").is_none().then_some(())
    });
    let uid_c = "c0c0c0c0-1111-4222-8333-666666666666";
    kube.put_claim(claim_fixture(
        uid_c,
        "claim-c",
        "fpga0-region1",
        tenant_uid + 1,
        None,
    ));
    let c = prepare(&mut dra, claim(uid_c, "claim-c")).await;
    assert!(
        c.error.contains("held by tenant"),
        "expected a refusal, got {c:?}"
    );
    assert_eq!(unprepare(&mut dra, claim(uid_c, "claim-c")).await, "");
    assert_eq!(
        slice_json(&bus.address, "fpga0/region1")["tenant"],
        format!("user:{TENANT_USER}")
    );

    // Unprepare: the spec goes, the daemon scrubs and unassigns the slice.
    assert_eq!(unprepare(&mut dra, claim(uid_a, "claim-a")).await, "");
    assert!(!spec_path.exists(), "the CDI spec is still there");
    let shown = slice_json(&bus.address, "fpga0/region0");
    assert_eq!(shown["tenant"], "", "{shown}");
    assert_eq!(shown["image_sha256"], "", "{shown}");
    assert_eq!(
        scratch(&bus.address),
        0,
        "the scratch register was not scrubbed"
    );
    // Twice, and for a claim nobody prepared: both succeed and leave no spec.
    assert_eq!(unprepare(&mut dra, claim(uid_a, "claim-a")).await, "");
    fs::write(
        d.cdi
            .join("accelgate-d0d0d0d0-0000-4000-8000-000000000000.json"),
        b"{}",
    )
    .unwrap();
    assert_eq!(
        unprepare(
            &mut dra,
            claim("d0d0d0d0-0000-4000-8000-000000000000", "ghost")
        )
        .await,
        ""
    );
    assert!(!d
        .cdi
        .join("accelgate-d0d0d0d0-0000-4000-8000-000000000000.json")
        .exists());

    // The refused claim gets the slice now that it is free.
    let b = prepare(&mut dra, claim(uid_b, "claim-b")).await;
    assert_eq!(b.error, "", "{}", plugin.log_text());
    assert_eq!(unprepare(&mut dra, claim(uid_b, "claim-b")).await, "");

    plugin.assert_alive("accelgate-dra");
    assert!(
        kube.unexpected().is_empty(),
        "unexpected API requests: {:?}",
        kube.unexpected()
    );
}
