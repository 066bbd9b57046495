use super::*;

fn parse_err(text: &str) -> String {
    parse(text, "wg0.conf", Side::Server).unwrap_err().to_string()
}

#[test]
fn file_round_trips_and_agrees_with_json() {
    let mut config = Configuration::generate(51820, 2).unwrap();
    config.peers[0].preshared_key = Some(keys::generate());
    config.peers[1].private_key = None;
    config.peers[1].persistent_keepalive = Some(25);
    let text = write(&config);
    let back = parse(&text, "wg0.conf", Side::Server).unwrap();
    assert_eq!(back, config);
    assert_eq!(write(&back), text);
    assert_eq!(Configuration::from_json(&back.to_json()).unwrap(), config);
}

#[test]
fn reads_what_people_write() {
    let (server, a, b) = (keys::generate(), keys::generate(), keys::generate());
    let (a, b) = (keys::public_of("", &a).unwrap(), keys::public_of("", &b).unwrap());
    let psk = keys::generate();
    let text = format!(
        "# my server\n[interface]\n  privatekey=  {server}  # secret\nlistenport = 51000\n\
         address = 10.8.0.1/24\nAddress = fd08::1/64\n\n\
         [Peer]\npublickey = {a}\nPresharedKey = {psk}\nAllowedIPs = 10.8.0.2/32,fd08::2/128\n\
         persistentkeepalive = off\n[PEER]\nPublicKey = {b}\nAllowedIPs = 10.8.0.3\nPersistentKeepalive = 25\n"
    );
    let config = parse(&text, "x", Side::Server).unwrap();
    assert_eq!(config.listen_port, 51000);
    assert_eq!(join(&config.address), "10.8.0.1/24, fd08::1/64");
    assert!(config.dns.is_empty() && config.mtu.is_none());
    assert_eq!(config.peers.len(), 2);
    assert_eq!(config.peers[0].preshared_key.as_deref(), Some(psk.as_str()));
    assert_eq!(config.peers[0].persistent_keepalive, None);
    assert_eq!(join(&config.peers[1].allowed_ips), "10.8.0.3/32");
    assert_eq!(config.peers[1].persistent_keepalive, Some(25));
    assert!(config.peers.iter().all(|p| p.private_key.is_none()));
}

#[test]
fn errors_name_file_line_and_field() {
    let key = keys::generate();
    let cases = [
        (format!("PrivateKey = {key}\n"), "line 1", "PrivateKey"),
        (
            format!("[Interface]\nPrivateKey = {key}\nListenPort = 70000\n"),
            "line 3",
            "ListenPort",
        ),
        (
            format!("[Interface]\nPrivateKey = {key}\nColour = blue\n"),
            "line 3",
            "Colour",
        ),
        (
            format!("[Interface]\nPrivateKey = {key}\nPostUp = true\n"),
            "line 3",
            "PostUp",
        ),
        (
            format!("[Interface]\nPrivateKey = {key}\nMTU = 100\n"),
            "line 3",
            "MTU",
        ),
        (
            format!("[Interface]\nPrivateKey = {key}\nAddress = 10.0.0.300\n"),
            "line 3",
            "Address",
        ),
        (
            "[Interface]\nPrivateKey = short\n".to_string(),
            "line 2",
            "PrivateKey",
        ),
        (
            "[Interface]\nListenPort = 1\n".to_string(),
            "line 1",
            "PrivateKey",
        ),
        (
            format!("[Interface]\nPrivateKey = {key}\n[Peer]\nAllowedIPs = 10.0.0.2\n"),
            "line 3",
            "PublicKey",
        ),
        (
            format!("[Interface]\nPrivateKey = {key}\n[Peer]\nPublicKey = {key}\nPublicKey = {key}\n"),
            "line 5",
            "PublicKey",
        ),
        (
            format!("[Interface]\nPrivateKey = {key}\n[Peers]\n"),
            "line 3",
            "[Peers]",
        ),
        (
            format!("[Interface]\nPrivateKey = {key}\njust words\n"),
            "line 3",
            "just words",
        ),
    ];
    for (text, line, field) in cases {
        let err = parse_err(&text);
        assert!(
            err.contains("wg0.conf") && err.contains(line) && err.contains(field),
            "{err}"
        );
    }
    assert!(parse_err("").contains("no [Interface] section"));
}

#[test]
fn errors_found_after_reading_name_their_line() {
    let line_of = |text: &str, needle: &str, nth: usize| {
        let lines: Vec<usize> = (1..)
            .zip(text.lines())
            .filter(|(_, l)| l.contains(needle))
            .map(|(n, _)| n)
            .collect();
        format!("line {}", lines[nth])
    };
    let mut config = Configuration::generate(1, 2).unwrap();
    let text = write(&config);
    let wrong = text.replace(config.peers[1].private_key.as_ref().unwrap(), &keys::generate());
    let err = parse_err(&wrong);
    assert!(
        err.contains(&line_of(&wrong, "# PrivateKey =", 1)) && err.contains("PrivateKey"),
        "{err}"
    );

    for peer in &mut config.peers {
        peer.private_key = None;
    }
    let text = write(&config);
    let dup = text.replace(&config.peers[1].public_key, &config.peers[0].public_key);
    let err = parse_err(&dup);
    assert!(
        err.contains(&line_of(&dup, "PublicKey", 1)) && err.contains("listed twice"),
        "{err}"
    );
    let clash = text.replace(
        &join(&config.peers[1].allowed_ips),
        &join(&config.peers[0].allowed_ips),
    );
    let err = parse_err(&clash);
    assert!(
        err.contains(&line_of(&clash, "AllowedIPs", 1)) && err.contains("overlaps"),
        "{err}"
    );
}

fn client_file(peer: &str) -> String {
    let (key, server) = (keys::generate(), keys::generate());
    let server = keys::public_of("", &server).unwrap();
    format!(
        "[Interface]\nPrivateKey = {key}\nAddress = 10.77.0.2/32, fd77::2/128\nDNS = 10.77.0.1\n\n\
         [Peer]\nPublicKey = {server}\nAllowedIPs = 0.0.0.0/0, ::/0\n{peer}"
    )
}

#[test]
fn a_clients_file_names_its_server_by_endpoint() {
    for endpoint in ["vpn.example.test:51820", "192.0.2.1:1", "[2001:db8::1]:51820"] {
        let text = client_file(&format!("Endpoint = {endpoint}\nPersistentKeepalive = 25\n"));
        let config = parse(&text, "c.conf", Side::Client).unwrap();
        assert_eq!(config.peers[0].endpoint.as_deref(), Some(endpoint));
        assert_eq!(config.peers[0].persistent_keepalive, Some(25));
        assert_eq!(join(&config.address), "10.77.0.2/32, fd77::2/128");
        // A server's file has no Endpoint.
        let err = parse(&text, "s.conf", Side::Server).unwrap_err().to_string();
        assert!(err.contains("line 9") && err.contains("Endpoint"), "{err}");
    }
}

#[test]
fn a_clients_file_without_its_server_or_addresses_says_what_is_missing() {
    let err = |text: &str| parse(text, "c.conf", Side::Client).unwrap_err().to_string();
    let e = err(&client_file(""));
    assert!(
        e.contains("line 6") && e.contains("Endpoint") && e.contains("missing"),
        "{e}"
    );
    let e = err(&client_file("Endpoint = 192.0.2.1\n"));
    assert!(e.contains("line 9") && e.contains("host:port"), "{e}");
    let e = err(&client_file("Endpoint = 192.0.2.1:0\n"));
    assert!(e.contains("line 9") && e.contains("not a port"), "{e}");
    let second = format!(
        "Endpoint = 192.0.2.1:5\n[Peer]\nPublicKey = {}\n",
        keys::public_of("", &keys::generate()).unwrap()
    );
    let e = err(&client_file(&second));
    assert!(e.contains("line 10") && e.contains("second [Peer]"), "{e}");
    let e =
        err(&client_file("Endpoint = 192.0.2.1:5\n").replace("Address = 10.77.0.2/32, fd77::2/128\n", ""));
    assert!(e.contains("Address") && e.contains("missing"), "{e}");
}
