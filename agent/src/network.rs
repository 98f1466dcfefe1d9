//! The pod's network inside the guest, over rtnetlink: interfaces found by MAC, renamed,
//! given an MTU and addresses and brought up; routes; static ARP/NDP neighbours. Also the
//! per-interface counters for stats.
use futures_util::stream::TryStreamExt;
use hyper_agent_protocol::agent;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: no interface with hardware address {mac}")]
    NoSuchMac { field: String, mac: String },
    #[error("{field}: no interface named {name:?}")]
    NoSuchDevice { field: String, name: String },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> NetError {
    NetError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

pub fn parse_mac(field: &str, s: &str) -> Result<Vec<u8>, NetError> {
    let bytes: Option<Vec<u8>> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    match bytes {
        Some(b) if b.len() == 6 && s.len() == 17 => Ok(b),
        _ => Err(invalid(field, format!("{s:?} is not a MAC address"))),
    }
}

/// "10.0.0.0/24" (or a bare address, taken as a host route).
pub fn parse_cidr(field: &str, s: &str) -> Result<(IpAddr, u8), NetError> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| invalid(field, format!("{s:?} is not an IP network")))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| invalid(field, format!("{s:?} has a bad prefix length")))?,
    };
    Ok((ip, len))
}

fn valid_ifname(field: &str, n: &str) -> Result<(), NetError> {
    if n.is_empty() || n.len() > 15 || n.contains('/') || n.contains(char::is_whitespace) {
        return Err(invalid(field, format!("{n:?} is not an interface name")));
    }
    Ok(())
}

/// Checks a sandbox's network description without touching anything.
pub fn validate(req: &agent::CreateSandboxRequest) -> Result<(), NetError> {
    for (i, itf) in req.interfaces.iter().enumerate() {
        let f = format!("interfaces[{i}]");
        valid_ifname(&format!("{f}.name"), &itf.name)?;
        parse_mac(&format!("{f}.hw_addr"), &itf.hw_addr)?;
        if !itf.device_hw_addr.is_empty() {
            parse_mac(&format!("{f}.device_hw_addr"), &itf.device_hw_addr)?;
        }
        if itf.mtu != 0 && !(68..=65535).contains(&itf.mtu) {
            return Err(invalid(
                format!("{f}.mtu"),
                format!("{} is out of range", itf.mtu),
            ));
        }
        for (j, a) in itf.addresses.iter().enumerate() {
            let (ip, _) = parse_cidr(&format!("{f}.addresses[{j}].address"), &a.address)?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if a.prefix_len > max {
                return Err(invalid(
                    format!("{f}.addresses[{j}].prefix_len"),
                    "too long",
                ));
            }
        }
    }
    for (i, r) in req.routes.iter().enumerate() {
        let f = format!("routes[{i}]");
        if !r.dest.is_empty() && r.dest != "default" {
            parse_cidr(&format!("{f}.dest"), &r.dest)?;
        }
        if !r.gateway.is_empty() {
            parse_cidr(&format!("{f}.gateway"), &r.gateway)?;
        }
        if !r.source.is_empty() {
            parse_cidr(&format!("{f}.source"), &r.source)?;
        }
        if r.device.is_empty() && r.gateway.is_empty() {
            return Err(invalid(f, "needs a device or a gateway"));
        }
        if r.scope > 255 {
            return Err(invalid(format!("{f}.scope"), "above 255"));
        }
    }
    for (i, n) in req.neighbors.iter().enumerate() {
        let f = format!("neighbors[{i}]");
        parse_cidr(&format!("{f}.to_ip"), &n.to_ip)?;
        parse_mac(&format!("{f}.ll_addr"), &n.ll_addr)?;
        valid_ifname(&format!("{f}.device"), &n.device)?;
    }
    Ok(())
}

async fn index_by_name(h: &Handle, field: &str, name: &str) -> Result<u32, NetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        _ => Err(NetError::NoSuchDevice {
            field: field.into(),
            name: name.into(),
        }),
    }
}

async fn index_by_mac(h: &Handle, field: &str, mac: &[u8], text: &str) -> Result<u32, NetError> {
    let mut links = h.link().get().execute();
    while let Some(l) = links.try_next().await.map_err(nl("list links"))? {
        if l.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Address(m) if m.as_slice() == mac))
        {
            return Ok(l.header.index);
        }
    }
    Err(NetError::NoSuchMac {
        field: field.into(),
        mac: text.into(),
    })
}

/// Applies the pod's interfaces, routes and neighbours in the current network namespace.
pub async fn setup(req: &agent::CreateSandboxRequest) -> Result<(), NetError> {
    validate(req)?;
    let (conn, h, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
    let task = tokio::spawn(conn);
    let res = apply(&h, req).await;
    task.abort();
    res
}

async fn apply(h: &Handle, req: &agent::CreateSandboxRequest) -> Result<(), NetError> {
    if let Ok(lo) = index_by_name(h, "lo", "lo").await {
        h.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(nl("set lo up"))?;
    }
    for (i, itf) in req.interfaces.iter().enumerate() {
        let f = format!("interfaces[{i}]");
        let mac = parse_mac(&f, &itf.hw_addr)?;
        // A restored VM's device still has the template's address: found by it, renamed.
        let (found_by, now) = match itf.device_hw_addr.as_str() {
            "" => ("hw_addr", itf.hw_addr.as_str()),
            other => ("device_hw_addr", other),
        };
        let idx = index_by_mac(h, &format!("{f}.{found_by}"), &parse_mac(&f, now)?, now).await?;
        h.link()
            .set(LinkUnspec::new_with_index(idx).down().build())
            .execute()
            .await
            .map_err(nl(format!("{f}: set down")))?;
        let mut b = LinkUnspec::new_with_index(idx).name(itf.name.clone());
        if !itf.device_hw_addr.is_empty() {
            b = b.address(mac);
        }
        if itf.mtu != 0 {
            b = b.mtu(itf.mtu);
        }
        h.link()
            .set(b.build())
            .execute()
            .await
            .map_err(nl(format!("{f}: set name/mtu")))?;
        for (j, a) in itf.addresses.iter().enumerate() {
            let (ip, _) = parse_cidr(&f, &a.address)?;
            h.address()
                .add(idx, ip, a.prefix_len as u8)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("{f}.addresses[{j}]")))?;
        }
        h.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(nl(format!("{f}: set up")))?;
    }
    // Device routes first, so gateways are reachable when their routes are added.
    let mut routes: Vec<(usize, &agent::Route)> = req.routes.iter().enumerate().collect();
    routes.sort_by_key(|(_, r)| !r.gateway.is_empty());
    for (i, r) in routes {
        add_route(h, &format!("routes[{i}]"), r).await?;
    }
    for (i, n) in req.neighbors.iter().enumerate() {
        let f = format!("neighbors[{i}]");
        let idx = index_by_name(h, &format!("{f}.device"), &n.device).await?;
        let (ip, _) = parse_cidr(&f, &n.to_ip)?;
        let mac = parse_mac(&f, &n.ll_addr)?;
        let mut rq = h
            .neighbours()
            .add(idx, ip)
            .link_layer_address(&mac)
            .replace();
        if n.state != 0 {
            rq = rq.state(NeighbourState::from(n.state as u16));
        }
        if n.flags != 0 {
            rq = rq.flags(NeighbourFlags::from_bits_truncate(n.flags as u8));
        }
        rq.execute().await.map_err(nl(f))?;
    }
    Ok(())
}

async fn add_route(h: &Handle, f: &str, r: &agent::Route) -> Result<(), NetError> {
    let dev = if r.device.is_empty() {
        None
    } else {
        Some(index_by_name(h, &format!("{f}.device"), &r.device).await?)
    };
    let dest = if r.dest.is_empty() || r.dest == "default" {
        None
    } else {
        Some(parse_cidr(f, &r.dest)?)
    };
    let gw = if r.gateway.is_empty() {
        None
    } else {
        Some(parse_cidr(f, &r.gateway)?.0)
    };
    let src = if r.source.is_empty() {
        None
    } else {
        Some(parse_cidr(f, &r.source)?.0)
    };
    let v6 = dest
        .map(|(ip, _)| ip.is_ipv6())
        .or(gw.map(|g| g.is_ipv6()))
        .unwrap_or(r.family == agent::ipaddress::Family::V6.into());
    let scope = RouteScope::from(r.scope as u8);
    let msg = if v6 {
        let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new();
        if let Some((IpAddr::V6(d), l)) = dest {
            b = b.destination_prefix(d, l);
        }
        if let Some(IpAddr::V6(g)) = gw {
            b = b.gateway(g);
        }
        if let Some(IpAddr::V6(s)) = src {
            b = b.pref_source(s);
        }
        if let Some(i) = dev {
            b = b.output_interface(i);
        }
        b.scope(scope).build()
    } else {
        let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new();
        if let Some((IpAddr::V4(d), l)) = dest {
            b = b.destination_prefix(d, l);
        }
        if let Some(IpAddr::V4(g)) = gw {
            b = b.gateway(g);
        }
        if let Some(IpAddr::V4(s)) = src {
            b = b.pref_source(s);
        }
        if let Some(i) = dev {
            b = b.output_interface(i);
        }
        b.scope(scope).build()
    };
    h.route()
        .add(msg)
        .replace()
        .execute()
        .await
        .map_err(nl(f.to_string()))
}

/// Counters of every interface but loopback, from `<sys_class_net>/*/statistics`.
pub fn interface_stats(sys_class_net: &Path) -> Vec<agent::NetworkStats> {
    let Ok(rd) = std::fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let mut out: Vec<agent::NetworkStats> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "lo" {
                return None;
            }
            let st = e.path().join("statistics");
            let g = |k: &str| {
                std::fs::read_to_string(st.join(k))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0)
            };
            Some(agent::NetworkStats {
                rx_bytes: g("rx_bytes"),
                rx_packets: g("rx_packets"),
                rx_errors: g("rx_errors"),
                rx_dropped: g("rx_dropped"),
                tx_bytes: g("tx_bytes"),
                tx_packets: g("tx_packets"),
                tx_errors: g("tx_errors"),
                tx_dropped: g("tx_dropped"),
                name,
                ..Default::default()
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_addresses() {
        assert_eq!(
            parse_mac("m", "02:00:ca:fe:00:01").unwrap(),
            vec![2, 0, 0xca, 0xfe, 0, 1]
        );
        assert!(parse_mac("m", "02:00:ca:fe:00").is_err());
        assert!(parse_mac("m", "2:0:ca:fe:0:1").is_err());
        assert_eq!(
            parse_cidr("d", "10.0.0.0/8").unwrap(),
            ("10.0.0.0".parse().unwrap(), 8)
        );
        assert_eq!(parse_cidr("d", "fd00::1").unwrap().1, 128);
        assert!(parse_cidr("d", "10.0.0.0/33").is_err());
        assert!(
            parse_cidr("d", "nope/3")
                .unwrap_err()
                .to_string()
                .starts_with("d:")
        );
    }

    #[test]
    fn validation_names_fields() {
        let mut req = agent::CreateSandboxRequest::default();
        req.interfaces.push(agent::Interface {
            name: "eth0".into(),
            hw_addr: "zz".into(),
            ..Default::default()
        });
        assert!(
            validate(&req)
                .unwrap_err()
                .to_string()
                .starts_with("interfaces[0].hw_addr")
        );
        req.interfaces[0].hw_addr = "02:00:00:00:00:01".into();
        req.interfaces[0].device_hw_addr = "02:00:00:00:00".into();
        assert!(
            validate(&req)
                .unwrap_err()
                .to_string()
                .starts_with("interfaces[0].device_hw_addr")
        );
        req.interfaces[0].device_hw_addr = "02:68:79:00:00:00".into();
        req.interfaces[0].mtu = 10;
        assert!(
            validate(&req)
                .unwrap_err()
                .to_string()
                .starts_with("interfaces[0].mtu")
        );
        req.interfaces[0].mtu = 1500;
        req.routes.push(agent::Route::default());
        assert!(
            validate(&req)
                .unwrap_err()
                .to_string()
                .starts_with("routes[0]")
        );
        req.routes[0].gateway = "10.0.0.1".into();
        validate(&req).unwrap();
    }

    #[test]
    fn stats_from_sysfs_layout() {
        let d = tempfile::tempdir().unwrap();
        for (n, rx) in [("eth0", "42\n"), ("lo", "1\n")] {
            let st = d.path().join(n).join("statistics");
            std::fs::create_dir_all(&st).unwrap();
            std::fs::write(st.join("rx_bytes"), rx).unwrap();
        }
        let s = interface_stats(d.path());
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].name.as_str(), s[0].rx_bytes, s[0].tx_bytes),
            ("eth0", 42, 0)
        );
    }
}
