use super::*;

fn options() -> ClientOptions {
    ClientOptions {
        allowed_ips: "0.0.0.0/0".into(),
        endpoint: "192.0.2.1:51820".into(),
        ..ClientOptions::default()
    }
}

#[test]
fn json_round_trips() {
    let config = Configuration::generate(51820, 3).unwrap();
    let back = Configuration::from_json(&config.to_json()).unwrap();
    assert_eq!(config, back);
    assert_eq!(back.peers.len(), 3);
}

#[test]
fn json_of_earlier_versions_still_reads() {
    let server = keys::generate();
    let client = keys::generate();
    let json = format!(
        r#"{{"listen_port": 51820, "private_key": "{server}", "peers": [{{"public_key": "{}"}}]}}"#,
        keys::public_of("", &client).unwrap()
    );
    let config = Configuration::from_json(&json).unwrap();
    assert!(config.address.is_empty() && config.peers[0].allowed_ips.is_empty());
}

#[test]
fn custom_derives_public_keys() {
    let client = keys::generate();
    let config = Configuration::custom(1, &keys::generate(), std::slice::from_ref(&client)).unwrap();
    assert_eq!(config.peers[0].public_key, keys::public_of("", &client).unwrap());
}

#[test]
fn bad_keys_name_their_field() {
    let err = Configuration::custom(1, "nope", &[]).unwrap_err();
    assert!(err.to_string().contains("server_private_key"), "{err}");
    let err = Configuration::custom(1, &keys::generate(), &["x".into()]).unwrap_err();
    assert!(err.to_string().contains("client_private_keys[0]"), "{err}");
}

#[test]
fn duplicate_and_mismatched_peers_are_rejected() {
    let mut config = Configuration::generate(1, 2).unwrap();
    config.peers[1].public_key = config.peers[0].public_key.clone();
    assert!(config.validate().unwrap_err().to_string().contains("peers[1]"));
    let json = config
        .to_json()
        .replace("\"listen_port\": 1", "\"listen_port\": 70000");
    assert!(Configuration::from_json(&json).is_err());
}

#[test]
fn peers_get_consecutive_addresses_of_both_families() {
    let config = Configuration::generate(1, 3).unwrap();
    let addresses: Vec<String> = config.peers.iter().map(|p| join(&p.allowed_ips)).collect();
    assert_eq!(
        addresses,
        [
            "10.0.0.2/32, fd00::2/128",
            "10.0.0.3/32, fd00::3/128",
            "10.0.0.4/32, fd00::4/128"
        ]
    );
}

#[test]
fn addresses_skip_taken_ones_and_reuse_freed_ones() {
    let mut config = Configuration::generate(1, 60).unwrap();
    let all: HashSet<String> = config
        .peers
        .iter()
        .map(|p| p.allowed_ips[0].to_string())
        .collect();
    assert_eq!(all.len(), 60);
    assert!(!all.contains("10.0.0.53/32"), "the DNS address is not handed out");
    assert!(!all.contains("10.0.0.83/32"), "nor the host number of fd00::53");
    let removed = config.peers[2].public_key.clone();
    config.remove_peer(&removed).unwrap();
    let peer = Peer::from_private_key("k", &keys::generate()).unwrap();
    let added = config.add_peer(peer).unwrap();
    assert_eq!(join(&added.allowed_ips), "10.0.0.4/32, fd00::4/128");
}

#[test]
fn addresses_follow_the_servers_networks() {
    let mut config = Configuration::generate(1, 0).unwrap();
    config.address = vec!["192.168.7.1/24".parse().unwrap()];
    for _ in 0..253 {
        let peer = Peer::from_private_key("k", &keys::generate()).unwrap();
        config.add_peer(peer).unwrap();
    }
    assert_eq!(
        config.peers[0].allowed_ips,
        ["192.168.7.2/32".parse::<IpNet>().unwrap()]
    );
    assert_eq!(config.peers[252].allowed_ips[0].to_string(), "192.168.7.254/32");
    let peer = Peer::from_private_key("k", &keys::generate()).unwrap();
    let err = config.add_peer(peer).unwrap_err().to_string();
    assert!(err.contains("no free tunnel address"), "{err}");
    assert_eq!(config.peers.len(), 253);
}

#[test]
fn overlapping_allowed_ips_are_rejected() {
    let mut config = Configuration::generate(1, 2).unwrap();
    config.peers[1].allowed_ips = vec!["10.0.0.0/24".parse().unwrap()];
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("peers[1].allowed_ips") && err.contains("10.0.0.0/24"),
        "{err}"
    );
}

#[test]
fn client_configs_name_server_key_address_dns_and_endpoint() {
    let config = Configuration::generate(51820, 2).unwrap();
    let texts = config.client_configs(&options()).unwrap();
    assert_eq!(texts.len(), 2);
    for (text, peer) in texts.iter().zip(&config.peers) {
        assert!(text.contains(peer.private_key.as_ref().unwrap()));
        assert!(text.contains(&config.server_public_key().unwrap()));
        assert!(text.contains(&format!("Address = {}\n", join(&peer.allowed_ips))));
        assert!(text.contains("DNS = 10.0.0.53, fd00::53\nMTU = 1420\n"));
        assert!(text.contains("Endpoint = 192.0.2.1:51820"));
    }
    let texts = config
        .client_configs(&ClientOptions {
            address: Some("10.9.9.9/32".into()),
            dns: Some(String::new()),
            mtu: Some(0),
            ..options()
        })
        .unwrap();
    assert!(texts[0].contains("Address = 10.9.9.9/32\n"));
    assert!(!texts[0].contains("DNS") && !texts[0].contains("MTU"));
}

#[test]
fn peers_given_by_key_alone_may_use_any_address() {
    let keys_of_peers: Vec<String> = (0..2)
        .map(|_| keys::public_of("", &keys::generate()).unwrap())
        .collect();
    let config = Configuration::from_keys(51820, &keys::generate(), &keys_of_peers).unwrap();
    assert_eq!(config.listen_port, 51820);
    assert!(config.address.is_empty(), "no tunnel address is the server's");
    assert!(config.peers.iter().all(|p| p.allowed_ips.is_empty()));
    let listed: Vec<&String> = config.peers.iter().map(|p| &p.public_key).collect();
    assert_eq!(listed, keys_of_peers.iter().collect::<Vec<_>>());
    assert_eq!(Configuration::from_json(&config.to_json()).unwrap(), config);
}

#[test]
fn keys_of_the_old_call_form_are_named_by_its_arguments() {
    let peer = keys::public_of("", &keys::generate()).unwrap();
    let err = Configuration::from_keys(1, "nope", std::slice::from_ref(&peer)).unwrap_err();
    assert!(err.to_string().starts_with("invalid private_key: "), "{err}");
    let peers = [peer.clone(), "x".into()];
    let err = Configuration::from_keys(1, &keys::generate(), &peers).unwrap_err();
    assert!(
        err.to_string().starts_with("invalid peer_public_keys[1]: "),
        "{err}"
    );
    let peers = [peer.clone(), format!(" {peer}\n")];
    let err = Configuration::from_keys(1, &keys::generate(), &peers).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid peer_public_keys[1]: the same peer is listed twice"
    );
}
