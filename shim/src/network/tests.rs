//! The pod network against real namespaces, veths, taps and tc on this machine (root):
//! a "pod" namespace holding the CNI-like `eth0`, its veth peer in a "peer" namespace.
use super::*;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &str, cmd: &[&str]) -> String {
    let mut args = vec!["netns", "exec", ns];
    args.extend(cmd);
    ip(&args)
}

/// Two namespaces and a veth between them, removed on drop.
struct Lab {
    pod: String,
    peer: String,
}

impl Lab {
    fn new(name: &str) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let id = std::process::id();
        let lab = Lab {
            pod: format!("hyper-{name}-{id}"),
            peer: format!("hyper-{name}-peer-{id}"),
        };
        for ns in [&lab.pod, &lab.peer] {
            ip(&["netns", "add", ns]);
            // No IPv6 chatter: the peer's counters then count only the test's frames.
            in_ns(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            in_ns(
                ns,
                &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
            );
        }
        ip(&[
            "-n", &lab.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "p0", "netns",
            &lab.peer,
        ]);
        ip(&["-n", &lab.pod, "link", "set", "eth0", "mtu", "1400", "up"]);
        ip(&[
            "-n",
            &lab.pod,
            "addr",
            "add",
            "10.123.0.2/24",
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &lab.pod,
            "route",
            "add",
            "default",
            "via",
            "10.123.0.1",
        ]);
        ip(&["-n", &lab.peer, "link", "set", "p0", "mtu", "1400", "up"]);
        ip(&["-n", &lab.peer, "addr", "add", "10.123.0.1/24", "dev", "p0"]);
        Some(lab)
    }

    fn netns(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.pod)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Reads one frame from the nonblocking tap within `timeout`.
fn read_frame(fd: &OwnedFd, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: reads into a buffer we own, from an fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            buf.truncate(n as usize);
            return Some(buf);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn rx_packets(lab: &Lab) -> u64 {
    in_ns(
        &lab.peer,
        &["cat", "/sys/class/net/p0/statistics/rx_packets"],
    )
    .trim()
    .parse()
    .unwrap()
}

#[tokio::test]
async fn every_frame_goes_between_the_interface_and_the_tap() {
    let Some(lab) = Lab::new("net") else { return };
    let (net, taps) = PodNetwork::attach(&lab.netns()).await.unwrap();

    // What the guest gets: the interface's name, MAC, MTU, address and its default route
    // (not the connected route the kernel derives from the address).
    let want_mac = in_ns(&lab.pod, &["cat", "/sys/class/net/eth0/address"]);
    assert_eq!(net.endpoints.len(), 1, "{:?}", net.endpoints);
    let e = &net.endpoints[0];
    assert_eq!(
        (e.name.as_str(), e.tap.as_str(), e.mtu),
        ("eth0", "hyper_tap0", 1400)
    );
    assert_eq!(e.mac, want_mac.trim());
    assert_eq!(e.addresses, vec![("10.123.0.2".parse().unwrap(), 24)]);
    assert_eq!(
        e.routes,
        vec![Route {
            dest: None,
            gateway: Some("10.123.0.1".parse().unwrap()),
            source: None,
            scope: 0,
        }]
    );
    let itf = &net.interfaces()[0];
    assert_eq!(
        (itf.name.as_str(), itf.hw_addr.as_str()),
        ("eth0", e.mac.as_str())
    );
    assert_eq!(net.routes()[0].gateway, "10.123.0.1");
    assert_eq!(taps.len(), 1);
    assert_eq!(taps[0].mac, e.mac);

    // peer -> eth0 -> tap: the peer's ARP for the pod address (a UDP send makes it)
    // arrives on the tap.
    let peer = lab.peer.clone();
    std::thread::spawn(move || {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &peer,
                "bash",
                "-c",
                "echo x > /dev/udp/10.123.0.2/9",
            ])
            .output();
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let arp = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = read_frame(&taps[0].fd, left).expect("no ARP frame on the tap");
        if frame[12..14] == [0x08, 0x06] {
            break frame;
        }
    };
    assert_eq!(&arp[..6], &[0xff; 6], "a broadcast ARP request: {arp:02x?}");

    // tap -> eth0 -> peer: a frame the "guest" writes reaches the peer.
    let before = rx_packets(&lab);
    let mut out = vec![0xffu8; 6];
    out.extend(hex_mac(&e.mac));
    out.extend([0x88, 0xb5]); // the local experimental ethertype
    out.extend([0u8; 46]);
    // SAFETY: writes a buffer we own to an fd we own.
    let n = unsafe { libc::write(taps[0].fd.as_raw_fd(), out.as_ptr().cast(), out.len()) };
    assert_eq!(n, out.len() as isize);
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx_packets(&lab) == before {
        assert!(
            Instant::now() < deadline,
            "the tap's frame never reached the peer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Teardown: no filters, no tap.
    drop(taps);
    net.detach().await;
    let links = in_ns(&lab.pod, &["ip", "-o", "link"]);
    assert!(!links.contains(TAP_PREFIX), "{links}");
    let qdiscs = in_ns(&lab.pod, &["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
}

fn hex_mac(s: &str) -> Vec<u8> {
    s.split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

#[tokio::test]
async fn a_namespace_without_interfaces_is_refused_by_name() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let name = format!("hyper-empty-{}", std::process::id());
    ip(&["netns", "add", &name]);
    let path = PathBuf::from("/run/netns").join(&name);
    let res = PodNetwork::attach(&path).await;
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    let e = res
        .err()
        .expect("attach of an empty namespace succeeded")
        .to_string();
    assert!(e.contains("has no interface but loopback"), "{e}");
    let e = PodNetwork::attach(Path::new("/run/netns/hyper-no-such-ns"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("/run/netns/hyper-no-such-ns"), "{e}");
}

/// A stand-in for the VMM's hybrid vsock socket and the agent's port forwarder: it takes
/// `CONNECT 1027`, then answers each request with `reply` and, after `OK`, the port it was
/// asked for, as text.
fn fake_guest(dir: &Path, reply: &'static str) -> PathBuf {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uds = dir.join("vsock.sock");
    let listener = tokio::net::UnixListener::bind(&uds).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let line = crate::agent::hybrid_vsock::read_line(&mut s, 64)
                    .await
                    .unwrap();
                assert_eq!(line.as_deref(), Some(&b"CONNECT 1027"[..]));
                s.write_all(b"OK 1\n").await.unwrap();
                let mut req = [0u8; 2];
                s.read_exact(&mut req).await.unwrap();
                s.write_all(reply.as_bytes()).await.unwrap();
                if reply == "OK\n" {
                    let port = u16::from_be_bytes(req);
                    s.write_all(format!("port {port}").as_bytes())
                        .await
                        .unwrap();
                }
            });
        }
    });
    uds
}

/// Connects to 127.0.0.1:`port` inside `netns` and reads until the far end closes.
async fn dial_loopback(netns: &Path, port: u16) -> std::io::Result<String> {
    netns::run_in(netns, move || async move {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut got = String::new();
        s.read_to_string(&mut got)?;
        Ok::<_, std::io::Error>(got)
    })
    .await
}

impl From<NetnsError> for std::io::Error {
    fn from(e: NetnsError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// A pod namespace with loopback up and a forwarder into a fake guest answering `reply`;
/// the temp dir holds the fake vsock socket.
async fn forwarding_lab(
    name: &str,
    reply: &'static str,
) -> Option<(Lab, tempfile::TempDir, PortForwarder)> {
    let lab = Lab::new(name)?;
    ip(&["-n", &lab.pod, "link", "set", "lo", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let uds = fake_guest(dir.path(), reply);
    let fwd = PortForwarder::start(&lab.netns(), uds, format!("{name}-test"))
        .await
        .unwrap();
    Some((lab, dir, fwd))
}

#[tokio::test]
async fn loopback_connections_to_any_port_reach_the_guest() {
    let Some((lab, _dir, fwd)) = forwarding_lab("pfwd", "OK\n").await else {
        return;
    };
    // Any port: what containerd's dial asks for is what the guest is asked for.
    for port in [80, 8080, 65535] {
        assert_eq!(
            dial_loopback(&lab.netns(), port).await.unwrap(),
            format!("port {port}")
        );
    }
    drop(fwd);
    let after = dial_loopback(&lab.netns(), 80).await;
    assert_eq!(
        after.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "still steered after the forwarder was dropped"
    );
}

#[tokio::test]
async fn a_port_the_guest_refuses_closes_the_connection() {
    let refusal = "ERR connect to port 81 in the pod: refused\n";
    let Some((lab, _dir, _fwd)) = forwarding_lab("pfwdno", refusal).await else {
        return;
    };
    assert_eq!(dial_loopback(&lab.netns(), 81).await.unwrap(), "");
}
