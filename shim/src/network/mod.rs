//! The pod's network, Kata's `tcfilter` model. CNI gives the pod a network namespace with
//! its interfaces (a veth `eth0`, maybe more). For each, the shim creates a tap beside it
//! in that namespace and redirects every frame between the two, both ways, with tc
//! (ingress qdisc + mirred); the tap goes to hyper-vmm as an fd, and the guest's virtio-net
//! device gets the interface's MAC, addresses, routes and MTU (the agent applies them).
//! The namespace's own stack then sees no traffic: the guest is the pod on the network.
//! Its loopback still matters to containerd, which serves `PortForward` by dialing there:
//! `port_forward` takes those connections into the guest.
mod isolated;
mod netns;
mod port_forward;
mod sk_lookup;
mod tap;
mod tc;
#[cfg(test)]
mod tests;

use futures_util::stream::TryStreamExt;
use hyper_agent_protocol::agent as pb;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use isolated::isolated_taps;
pub use netns::NetnsError;
pub use port_forward::{PortForwardError, PortForwarder};

/// Our taps in the pod's namespace: `hyper_tap0`, `hyper_tap1`, ...
const TAP_PREFIX: &str = "hyper_tap";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("netlink socket in the pod's network namespace: {0}")]
    Socket(std::io::Error),
    #[error("pod network, {what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("pod network: create tap {name}: {source}")]
    Tap {
        name: String,
        source: std::io::Error,
    },
    #[error(
        "pod network: the network namespace {0:?} has no interface but loopback (did CNI run?)"
    )]
    NoInterface(PathBuf),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// A route of an interface, as the guest must have it.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `None`: the default route.
    pub dest: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    pub scope: u8,
}

impl Route {
    /// A route's family is that of its destination, else of its gateway.
    fn family(&self) -> pb::ipaddress::Family {
        match self.dest.map(|d| d.0).or(self.gateway) {
            Some(ip) => family(&ip),
            None => pb::ipaddress::Family::V4,
        }
    }
}

/// One CNI interface and the tap that stands in for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The CNI interface's name; the guest's interface gets the same name.
    pub name: String,
    pub index: u32,
    pub tap: String,
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<(IpAddr, u8)>,
    pub routes: Vec<Route>,
}

/// The pod's network namespace with our taps and filters in it.
#[derive(Debug)]
pub struct PodNetwork {
    pub netns: PathBuf,
    pub endpoints: Vec<Endpoint>,
}

/// A tap for the VMM: its fd (the only reference that keeps it alive) and the guest MAC.
pub struct TapDevice {
    pub fd: OwnedFd,
    pub mac: String,
}

impl PodNetwork {
    /// Plumbs every interface of the namespace at `netns` to a tap; returns the network
    /// and the taps for the VMM, in endpoint order. On error nothing is left behind.
    pub async fn attach(netns: &Path) -> Result<(Self, Vec<TapDevice>), NetworkError> {
        let path = netns.to_path_buf();
        let (endpoints, taps) = netns::run_in(netns, move || attach_here(path)).await?;
        let net = PodNetwork {
            netns: netns.to_path_buf(),
            endpoints,
        };
        for e in &net.endpoints {
            tracing::info!(
                netns = %net.netns.display(), interface = %e.name, tap = %e.tap, mac = %e.mac,
                mtu = e.mtu, addresses = ?e.addresses, "pod interface redirected to the VM"
            );
        }
        Ok((net, taps))
    }

    /// Removes our filters (and any tap the VMM left). A namespace CNI already removed has
    /// nothing left to clean.
    pub async fn detach(&self) {
        if !self.netns.exists() {
            return;
        }
        let endpoints = self.endpoints.clone();
        let res = netns::run_in(&self.netns, move || async move {
            let h = connect()?;
            for e in &endpoints {
                remove_endpoint(&h, e).await;
            }
            Ok::<_, NetworkError>(())
        })
        .await;
        if let Err(e) = res {
            tracing::warn!(netns = %self.netns.display(), "pod network teardown: {e}");
        }
    }

    /// What the agent needs to configure the guest's interfaces.
    pub fn interfaces(&self) -> Vec<pb::Interface> {
        self.endpoints
            .iter()
            .map(|e| pb::Interface {
                name: e.name.clone(),
                hw_addr: e.mac.clone(),
                mtu: e.mtu,
                addresses: e
                    .addresses
                    .iter()
                    .map(|(ip, len)| pb::IPAddress {
                        family: family(ip).into(),
                        address: ip.to_string(),
                        prefix_len: u32::from(*len),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    }

    pub fn routes(&self) -> Vec<pb::Route> {
        let mut out = Vec::new();
        for e in &self.endpoints {
            for r in &e.routes {
                out.push(pb::Route {
                    dest: r
                        .dest
                        .map(|(ip, l)| format!("{ip}/{l}"))
                        .unwrap_or_default(),
                    gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    device: e.name.clone(),
                    source: r.source.map(|s| s.to_string()).unwrap_or_default(),
                    scope: u32::from(r.scope),
                    family: r.family().into(),
                    ..Default::default()
                });
            }
        }
        out
    }
}

fn family(ip: &IpAddr) -> pb::ipaddress::Family {
    if ip.is_ipv6() {
        pb::ipaddress::Family::V6
    } else {
        pb::ipaddress::Family::V4
    }
}

fn connect() -> Result<Handle, NetworkError> {
    let (conn, h, _) = rtnetlink::new_connection().map_err(NetworkError::Socket)?;
    tokio::spawn(conn);
    Ok(h)
}

/// In the pod's namespace: every interface but loopback (and our own taps) gets a tap.
async fn attach_here(netns: PathBuf) -> Result<(Vec<Endpoint>, Vec<TapDevice>), NetworkError> {
    let h = connect()?;
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list interfaces"))?;
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut taps = Vec::new();
    for link in links.iter().filter_map(Interface::of) {
        let tap = format!("{TAP_PREFIX}{}", endpoints.len());
        match plumb(&h, &link, &tap).await {
            Ok((endpoint, fd)) => {
                taps.push(TapDevice {
                    fd,
                    mac: endpoint.mac.clone(),
                });
                endpoints.push(endpoint);
            }
            Err(e) => {
                for done in &endpoints {
                    remove_endpoint(&h, done).await;
                }
                // A half-made tap: its fd is gone, only filters may remain.
                let _ = tc::remove_ingress(&h, link.index).await;
                return Err(e);
            }
        }
    }
    if endpoints.is_empty() {
        return Err(NetworkError::NoInterface(netns));
    }
    Ok((endpoints, taps))
}

/// The facts of one interface that matter, from its netlink message.
struct Interface {
    index: u32,
    name: String,
    mac: [u8; 6],
    mtu: u32,
}

impl Interface {
    fn of(m: &LinkMessage) -> Option<Self> {
        if m.header.flags.contains(LinkFlags::Loopback) {
            return None;
        }
        let mut name = None;
        let mut mac = None;
        let mut mtu = 1500;
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        let name = name?;
        if name.starts_with(TAP_PREFIX) {
            return None;
        }
        Some(Interface {
            index: m.header.index,
            name,
            mac: mac?,
            mtu,
        })
    }
}

async fn plumb(
    h: &Handle,
    itf: &Interface,
    tap: &str,
) -> Result<(Endpoint, OwnedFd), NetworkError> {
    let fd = tap::create(tap).map_err(|source| NetworkError::Tap {
        name: tap.to_string(),
        source,
    })?;
    let tap_index = index_of(h, tap).await?;
    h.link()
        .set(
            LinkUnspec::new_with_index(tap_index)
                .mtu(itf.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("set {tap} up")))?;
    tc::redirect_both_ways(h, itf.index, tap_index)
        .await
        .map_err(nl(format!("redirect {} <-> {tap}", itf.name)))?;
    let endpoint = Endpoint {
        name: itf.name.clone(),
        index: itf.index,
        tap: tap.to_string(),
        mac: itf
            .mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
        mtu: itf.mtu,
        addresses: addresses(h, itf).await?,
        routes: routes(h, itf).await?,
    };
    Ok((endpoint, fd))
}

async fn index_of(h: &Handle, name: &str) -> Result<u32, NetworkError> {
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("find {name}")))?;
    Ok(links.first().map_or(0, |l| l.header.index))
}

async fn remove_endpoint(h: &Handle, e: &Endpoint) {
    if let Err(err) = tc::remove_ingress(h, e.index).await {
        tracing::debug!(interface = %e.name, "remove ingress qdisc: {err}");
    }
    if let Ok(i) = index_of(h, &e.tap).await
        && i != 0
        && let Err(err) = h.link().del(i).execute().await
    {
        tracing::debug!(tap = %e.tap, "remove tap: {err}");
    }
}

/// The interface's addresses, but IPv6 link-local ones (the guest makes its own).
async fn addresses(h: &Handle, itf: &Interface) -> Result<Vec<(IpAddr, u8)>, NetworkError> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(itf.index)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("addresses of {}", itf.name)))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.index == itf.index)
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })?;
            (!is_link_local(&ip)).then_some((ip, m.header.prefix_len))
        })
        .collect())
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

/// The main table's unicast routes through the interface, but those the kernel derives
/// from its addresses (the guest's kernel derives them again).
async fn routes(h: &Handle, itf: &Interface) -> Result<Vec<Route>, NetworkError> {
    let dumps = [
        ("IPv4", RouteMessageBuilder::<Ipv4Addr>::new().build()),
        ("IPv6", RouteMessageBuilder::<Ipv6Addr>::new().build()),
    ];
    let mut routes = Vec::new();
    for (family, dump) in dumps {
        let msgs: Vec<RouteMessage> = h
            .route()
            .get(dump)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("{family} routes of {}", itf.name)))?;
        routes.extend(msgs.iter().filter_map(|m| route_of(m, itf.index)));
    }
    Ok(routes)
}

fn route_of(m: &RouteMessage, index: u32) -> Option<Route> {
    let hdr = &m.header;
    if hdr.table != RouteHeader::RT_TABLE_MAIN
        || hdr.kind != RouteType::Unicast
        || hdr.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let (mut oif, mut dest, mut gateway, mut source) = (None, None, None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(d) => dest = ip(d),
            RouteAttribute::Gateway(g) => gateway = ip(g),
            RouteAttribute::PrefSource(s) => source = ip(s),
            _ => {}
        }
    }
    if oif != Some(index) || dest.as_ref().is_some_and(is_link_local) {
        return None;
    }
    Some(Route {
        dest: dest.map(|d| (d, hdr.destination_prefix_length)),
        gateway,
        source,
        scope: u8::from(hdr.scope),
    })
}
