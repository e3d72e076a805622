//! The plugin as the kubelet sees it, without a cluster: this test registers it over its
//! registration socket, prepares and unprepares claims over gRPC, against the real daemon on
//! the simulated host (testkit's private bus and daemon) and a loopback fake of the Kubernetes
//! API. The plugin runs as testkit's operator user, the Pods' tenant is its first tenant user.
//!
//! Needs root, dbus-daemon, busctl, setpriv and podman (scripts/install-test-deps installs
//! them); a missing one fails the test with a message.

mod fake_kube;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use accelgate_dra::proto::dra::{
    Claim, NodePrepareResourceResponse, NodePrepareResourcesRequest, NodePrepareResourcesResponse,
    NodeUnprepareResourcesRequest, NodeUnprepareResourcesResponse, NODE_PREPARE_RESOURCES,
    NODE_UNPREPARE_RESOURCES,
};
use accelgate_dra::proto::registration::{InfoRequest, PluginInfo, GET_INFO};
use accelgate_testkit::{
    ctl, ensure_users, repo_path, require_binary, test_dir, uid_of, TestBus, TestDaemon,
};
use fake_kube::FakeKube;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const DRIVER: &str = "accelgate.org";
const NODE: &str = "node1";
/// The plugin's user: the test's policy gives it the `kubernetes` role.
const PLUGIN_USER: &str = "ag-operator";
/// The user the claims name as tenant (a member of the simulated policy's tenant group).
const TENANT_USER: &str = "ag-tenant1";
/// Another tenant, for claims that must be refused.
const OTHER_TENANT: &str = "ag-tenant2";

/// The simulated policy plus a role for the plugin's user: assign and release slices and load
/// images into them, on every slice of the node (docs/kubernetes.md gives the same role).
fn policy(dir: &Path) -> PathBuf {
    let mut text = fs::read_to_string(repo_path("policy/simulated.toml")).unwrap();
    text.push_str(&format!(
        "\n[[role]]\nid = \"kubernetes\"\nusers = [\"{PLUGIN_USER}\"]\noperations = [\"slice.assign\", \"slice.program\", \"slice.read\"]\n"
    ));
    let p = dir.join("policy.toml");
    fs::write(&p, text).unwrap();
    p
}

/// The plugin process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Plugin {
    child: Option<Child>,
    log: PathBuf,
}

impl Plugin {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash or an OOM kill would.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn assert_alive(&mut self) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
            panic!("accelgate-dra exited with {status}:\n{}", self.log_text());
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id();
            accelgate_testkit::terminate(&mut c, pid, Duration::from_secs(5));
        }
    }
}

/// Polls `f` until it returns Some, or fails after `secs` with `what`.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A directory owned by `user` (the kubelet's directories, where the plugin makes sockets).
fn owned_dir(path: &Path, user: &str) -> PathBuf {
    fs::create_dir_all(path).unwrap();
    let uid = nix::unistd::Uid::from_raw(uid_of(user));
    nix::unistd::chown(path, Some(uid), None).unwrap();
    path.to_owned()
}

/// One unary gRPC call, as the kubelet makes it.
async fn call<Req, Resp>(channel: &tonic::transport::Channel, path: &'static str, req: Req) -> Resp
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .expect("the plugin's gRPC server is ready");
    grpc.unary(
        tonic::Request::new(req),
        http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::<Req, Resp>::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"))
    .into_inner()
}

struct Dirs {
    registry: PathBuf,
    plugins: PathBuf,
    cdi: PathBuf,
    images: PathBuf,
    kubeconfig: PathBuf,
}

fn start_plugin(dir: &Path, d: &Dirs, bus: &TestBus) -> Plugin {
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
        .arg(bus.socket())
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
    let mut p = Plugin {
        child: Some(child),
        log,
    };
    // Both sockets accept connections (a socket file left by a killed plugin refuses them).
    let reg = d.registry.join(format!("{DRIVER}-reg.sock"));
    let dra = d.plugins.join(DRIVER).join("dra.sock");
    wait_for(30, "the plugin's sockets", || {
        p.assert_alive();
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

async fn prepare(dra: &tonic::transport::Channel, c: Claim) -> NodePrepareResourceResponse {
    let uid = c.uid.clone();
    let resp: NodePrepareResourcesResponse = call(
        dra,
        NODE_PREPARE_RESOURCES,
        NodePrepareResourcesRequest { claims: vec![c] },
    )
    .await;
    assert_eq!(resp.claims.len(), 1, "one entry per claim");
    resp.claims
        .get(&uid)
        .cloned()
        .expect("an entry for the claim")
}

async fn unprepare(dra: &tonic::transport::Channel, c: Claim) -> String {
    let uid = c.uid.clone();
    let resp: NodeUnprepareResourcesResponse = call(
        dra,
        NODE_UNPREPARE_RESOURCES,
        NodeUnprepareResourcesRequest { claims: vec![c] },
    )
    .await;
    resp.claims
        .get(&uid)
        .expect("an entry for the claim")
        .error
        .clone()
}

/// Resolves a fully qualified CDI id against the spec files in `dir` as a runtime would:
/// the file whose kind matches, checked as a CDI spec (the plugin's own check, written from the
/// CDI specification; podman_applies is the real consumer's check), and the
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
        accelgate_dra::cdi::spec::Spec::from_json(&fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{} is not a valid CDI spec: {e}", path.display()));
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

/// How many image loads the daemon allowed, from its audit log.
fn programs(daemon: &TestDaemon) -> usize {
    fs::read_to_string(daemon.state_dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["operation"] == "slice.program" && r["decision"] == "allow")
        .count()
}

fn slice_json(address: &str, target: &str) -> Value {
    ctl(address, "root", &["--json", "show", target])
        .ok()
        .json()
}

/// fpga0/region0's first scratch register, read as root.
fn scratch(address: &str) -> u64 {
    let regs = ctl(
        address,
        "root",
        &["--json", "read", "fpga0/region0", "0x100", "--width", "4"],
    )
    .ok()
    .json();
    regs[0]["value"]
        .as_u64()
        .unwrap_or_else(|| panic!("no register value in {regs}"))
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
    let dir = test_dir("dra-kubelet");
    let bus = TestBus::start(&dir);
    let policy = policy(&dir);
    let daemon = TestDaemon::start(&bus, &dir, &policy);
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
    let other_uid = uid_of(OTHER_TENANT);

    let mut plugin = start_plugin(&dir, &d, &bus);

    // Registration, as the kubelet's plugin watcher does it.
    let reg = channel(d.registry.join(format!("{DRIVER}-reg.sock"))).await;
    let info: PluginInfo = call(&reg, GET_INFO, InfoRequest {}).await;
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
    ctl(&bus.address, "root", &["vfs", "nic0", "2"]).ok();
    let generation1 = wait_for(30, "the VFs in the ResourceSlice", || {
        let (g, devs) = last_devices(&kube)?;
        (device(&devs, "nic0-vf1").is_some()).then_some(g)
    });
    assert!(
        generation1 > generation0,
        "generation {generation1} after {generation0}"
    );

    let dra = channel(endpoint.clone()).await;

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
    let v = prepare(&dra, claim(uid_v, "claim-vf")).await;
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
    assert_eq!(unprepare(&dra, claim(uid_v, "claim-vf")).await, "");
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
    let a = prepare(&dra, claim(uid_a, "claim-a")).await;
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
        bus.socket().display().to_string()
    );
    assert_eq!(
        edits["mounts"][0]["containerPath"],
        "/run/dbus/system_bus_socket"
    );
    podman_applies(
        &dir,
        &d.cdi.join(format!("accelgate-{uid_a}.json")),
        &cdi_id,
        &bus.socket(),
    );

    // The daemon did it: the slice is the tenant's and holds the image.
    let shown = slice_json(&bus.address, "fpga0/region0");
    assert_eq!(shown["tenant"], format!("user:{TENANT_USER}"), "{shown}");
    assert_eq!(shown["image_sha256"], image_sha, "{shown}");
    assert_eq!(programs(&daemon), 1);
    // ... and the tenant can use it through the bus the spec mounts.
    ctl(
        &bus.address,
        TENANT_USER,
        &["write", "fpga0/region0", "0x100", "0xcafe", "--width", "4"],
    )
    .ok();
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
    let again = prepare(&dra, claim(uid_a, "claim-a")).await;
    assert_eq!(again, a);
    assert_eq!(programs(&daemon), 1, "the image was loaded again");
    assert_eq!(
        fs::metadata(&spec_path).unwrap().modified().unwrap(),
        mtime_before
    );

    // So does a repeat after the plugin is killed and started again.
    plugin.kill();
    let mut plugin = start_plugin(&dir, &d, &bus);
    let dra = channel(endpoint.clone()).await;
    let after_restart = prepare(&dra, claim(uid_a, "claim-a")).await;
    assert_eq!(after_restart, a, "plugin log:\n{}", plugin.log_text());
    assert_eq!(
        programs(&daemon),
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
        other_uid,
        None,
    ));
    let b = prepare(&dra, claim(uid_b, "claim-b")).await;
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
    assert_eq!(unprepare(&dra, claim(uid_b, "claim-b")).await, "");
    assert_eq!(
        slice_json(&bus.address, "fpga0/region0")["tenant"],
        format!("user:{TENANT_USER}")
    );

    // A slice held by a tenant outside Kubernetes is refused too (the daemon says Busy).
    ctl(
        &bus.address,
        "root",
        &["assign", "fpga0/region1", TENANT_USER],
    )
    .ok();
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
        other_uid,
        None,
    ));
    let c = prepare(&dra, claim(uid_c, "claim-c")).await;
    assert!(
        c.error.contains("held by tenant"),
        "expected a refusal, got {c:?}"
    );
    assert_eq!(unprepare(&dra, claim(uid_c, "claim-c")).await, "");
    assert_eq!(
        slice_json(&bus.address, "fpga0/region1")["tenant"],
        format!("user:{TENANT_USER}")
    );

    // Unprepare: the spec goes, the daemon scrubs and unassigns the slice.
    assert_eq!(unprepare(&dra, claim(uid_a, "claim-a")).await, "");
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
    assert_eq!(unprepare(&dra, claim(uid_a, "claim-a")).await, "");
    fs::write(
        d.cdi
            .join("accelgate-d0d0d0d0-0000-4000-8000-000000000000.json"),
        b"{}",
    )
    .unwrap();
    assert_eq!(
        unprepare(&dra, claim("d0d0d0d0-0000-4000-8000-000000000000", "ghost")).await,
        ""
    );
    assert!(!d
        .cdi
        .join("accelgate-d0d0d0d0-0000-4000-8000-000000000000.json")
        .exists());

    // The refused claim gets the slice now that it is free.
    let b = prepare(&dra, claim(uid_b, "claim-b")).await;
    assert_eq!(b.error, "", "{}", plugin.log_text());
    assert_eq!(unprepare(&dra, claim(uid_b, "claim-b")).await, "");

    plugin.assert_alive();
    assert!(
        kube.unexpected().is_empty(),
        "unexpected API requests: {:?}",
        kube.unexpected()
    );
}
