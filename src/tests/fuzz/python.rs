//! Python's side: what it hears (each event checked against what the clients sent and Python did), and what
//! it does.

use super::*;

impl World {
    /// One event for Python, checked against what Python and the clients know.
    pub(super) fn event(&mut self, event: NetworkToPython) {
        let python = &mut self.python;
        match event {
            NetworkToPython::ConnectionRequested {
                id,
                peer,
                endpoint,
                src,
                dst,
            } => {
                assert!(python.ask_first, "asked about connection {id} unasked");
                assert!(
                    id < OUTGOING && !python.conns.contains_key(&id),
                    "requested {id} twice"
                );
                let i = self
                    .clients
                    .iter()
                    .position(|c| c.peer == Some(peer.id))
                    .expect("a client's peer");
                assert_eq!(endpoint, self.clients[i].home);
                assert!(
                    self.clients[i].syns.contains(&(src, dst)),
                    "a request without a SYN"
                );
                let conn = Conn {
                    state: State::Requested,
                    peer: peer.id,
                    flow: (src, dst),
                    eof: false,
                    written: 0,
                    drained: 0,
                };
                python.conns.insert(id, conn);
            }
            NetworkToPython::ConnectionEstablished {
                id,
                peer,
                endpoint,
                src,
                dst,
            } => {
                count(&ESTABLISHED, 1);
                let i = self
                    .clients
                    .iter()
                    .position(|c| c.peer == Some(peer.id))
                    .expect("a client's peer");
                match python.conns.get_mut(&id) {
                    None => {
                        assert!(!python.ask_first, "connection {id} established without a request");
                        assert!(id < OUTGOING);
                        assert_eq!(endpoint, self.clients[i].home);
                        assert!(
                            self.clients[i].syns.contains(&(src, dst)),
                            "established without a SYN"
                        );
                        let conn = Conn {
                            state: State::Open,
                            peer: peer.id,
                            flow: (src, dst),
                            eof: false,
                            written: 0,
                            drained: 0,
                        };
                        python.conns.insert(id, conn);
                    }
                    Some(conn) => {
                        assert!(
                            matches!(conn.state, State::Accepted | State::Connecting),
                            "connection {id} established in state {:?}",
                            conn.state
                        );
                        assert_eq!(conn.peer, peer.id);
                        assert_eq!(conn.flow.0, src);
                        // Python's own connection from a free port: the port is known now.
                        assert!(
                            conn.flow.1 == dst || (conn.flow.1.port() == 0 && conn.flow.1.ip() == dst.ip())
                        );
                        conn.flow.1 = dst;
                        conn.state = State::Open;
                    }
                }
            }
            NetworkToPython::Data { id, data } => {
                let conn = python
                    .conns
                    .get(&id)
                    .unwrap_or_else(|| panic!("data for unknown {id}"));
                // Every byte comes before ConnectionClosed.
                assert_eq!(conn.state, State::Open, "data in {:?}", conn.state);
                assert!(!conn.eof, "data after EOF");
                assert!(!data.is_empty(), "empty data");
                assert!(
                    data.len() <= python.room,
                    "read {} with room for {}",
                    data.len(),
                    python.room
                );
                python.room -= data.len();
                count(&DATA_BYTES, data.len());
                let i = self
                    .clients
                    .iter()
                    .position(|c| c.peer == Some(conn.peer))
                    .expect("a client's peer");
                let read = python.read.entry((i, conn.flow.0, conn.flow.1)).or_default();
                *read += data.len();
                let sent = self.clients[i].tcp_bytes.get(&conn.flow).copied().unwrap_or(0);
                assert!(
                    *read <= sent,
                    "read {read} bytes of a flow whose client sent {sent}"
                );
            }
            NetworkToPython::Eof { id } => {
                let conn = python
                    .conns
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("EOF for unknown {id}"));
                assert_eq!(conn.state, State::Open, "EOF in {:?}", conn.state);
                assert!(!conn.eof, "EOF twice");
                conn.eof = true;
            }
            NetworkToPython::Drained { id, bytes } => {
                let conn = python
                    .conns
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("drained for unknown {id}"));
                assert_eq!(conn.state, State::Open, "drained");
                conn.drained += bytes;
                assert!(
                    conn.drained <= conn.written,
                    "drained {} of {}",
                    conn.drained,
                    conn.written
                );
            }
            NetworkToPython::ConnectionClosed { id, reset } => {
                count(&CLOSED, 1);
                let conn = python
                    .conns
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("closed unknown {id}"));
                assert_eq!(conn.state, State::Open, "closed {id}");
                // An orderly end comes after EOF, so after every byte before the client's FIN.
                assert!(reset || conn.eof, "closed {id} before its EOF");
                conn.state = if reset { State::Gone } else { State::Ended };
            }
            NetworkToPython::ConnectFailed { id, .. } => {
                let conn = python
                    .conns
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("failed unknown {id}"));
                assert_eq!(conn.state, State::Connecting, "failed {id}");
                conn.state = State::Gone;
            }
            NetworkToPython::Datagram { data, src, dst, peer } => {
                count(&DATAGRAMS, 1);
                let i = self
                    .clients
                    .iter()
                    .position(|c| c.peer == Some(peer.id))
                    .expect("a client's peer");
                let client = &self.clients[i];
                assert!(
                    client.loose || client.udp.contains(&(src, dst, data)),
                    "a datagram the client never sent"
                );
                python.received.push((src, dst, peer.id));
            }
            other => panic!("the stack sent {other:?}"),
        }
    }

    /// The id Python acts on: one it knows, or any.
    pub(super) fn id(&self, pick: usize) -> ConnectionId {
        if pick >= 1 << 20 || self.python.conns.is_empty() {
            return (pick % 8) as ConnectionId;
        }
        *self
            .python
            .conns
            .keys()
            .nth(pick % self.python.conns.len())
            .unwrap()
    }

    pub(super) fn python_acts(&mut self, action: Action) {
        let now = self.now;
        let request = match action {
            Action::Answer { pick, answer } => {
                let id = self.id(pick);
                let answer = match answer {
                    0 | 1 => SynAnswer::Accept,
                    2 => SynAnswer::Reset,
                    3 => SynAnswer::Silence,
                    4 => SynAnswer::Unreachable(Unreachable::Host),
                    _ => SynAnswer::Unreachable(Unreachable::Prohibited),
                };
                if let Some(conn) = self.python.conns.get_mut(&id) {
                    if conn.state == State::Requested {
                        conn.state = if answer == SynAnswer::Accept {
                            State::Accepted
                        } else {
                            State::Gone
                        };
                    }
                }
                PythonToNetwork::Answer { id, answer }
            }
            Action::Write { pick, len } => {
                let id = self.id(pick);
                if let Some(conn) = self.python.conns.get_mut(&id) {
                    conn.written += len;
                }
                PythonToNetwork::Write {
                    id,
                    data: vec![0x42; len],
                }
            }
            Action::WriteEof { pick } => PythonToNetwork::WriteEof { id: self.id(pick) },
            Action::Close { pick } | Action::Abort { pick } => {
                let id = self.id(pick);
                if let Some(conn) = self.python.conns.get_mut(&id) {
                    conn.state = State::Gone;
                }
                if matches!(action, Action::Close { .. }) {
                    PythonToNetwork::Close { id }
                } else {
                    PythonToNetwork::Abort { id }
                }
            }
            Action::Pause { pick } => PythonToNetwork::PauseReading { id: self.id(pick) },
            Action::Resume { pick } => PythonToNetwork::ResumeReading { id: self.id(pick) },
            Action::Drain => {
                self.python.room = self.python.capacity;
                PythonToNetwork::ResumeStarved
            }
            Action::Datagram { pick, len, name_peer } => {
                let data = vec![0x17; len];
                let (src, dst, peer) = match self.python.received.len() {
                    0 => (
                        "10.0.0.42:53".parse().unwrap(),
                        "10.0.0.1:5000".parse().unwrap(),
                        0,
                    ),
                    n => {
                        let (src, dst, peer) = self.python.received[pick % n];
                        (dst, src, peer)
                    }
                };
                self.python.sent.insert((src, dst, data.clone()));
                PythonToNetwork::SendDatagram {
                    data,
                    src,
                    dst,
                    peer: name_peer.then_some(peer),
                }
            }
            Action::Connect {
                client,
                flow,
                free_port,
            } => {
                let Some(peer) = self.clients[client].peer else {
                    return;
                };
                let c = &self.clients[client];
                let (client_side, mut remote) = *c.flows.keys().nth(flow % c.flows.len()).unwrap();
                if free_port {
                    remote.set_port(0);
                }
                let id = self.python.next_outgoing;
                self.python.next_outgoing += 1;
                let conn = Conn {
                    state: State::Connecting,
                    peer,
                    flow: (client_side, remote),
                    eof: false,
                    written: 0,
                    drained: 0,
                };
                self.python.conns.insert(id, conn);
                PythonToNetwork::Connect {
                    id,
                    peer,
                    src: remote,
                    dst: client_side,
                }
            }
            Action::RemovePeer { client, add_back } => {
                self.remove_peer(client, add_back);
                return;
            }
        };
        self.stack.handle(now, request, &mut self.out);
    }

    /// What Python knows agrees with the stack: no more connections than the stack holds are open.
    pub(super) fn check_python(&self) {
        let open = self
            .python
            .conns
            .values()
            .filter(|c| c.state == State::Open)
            .count();
        assert!(
            open <= self.stack.connection_count(),
            "{open} open, the stack holds fewer"
        );
    }
}
