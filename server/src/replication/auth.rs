//! Peer authentication: a mutual challenge/response over the shared `--peer-secret`.
//!
//! 1. The accepting node sends a `Challenge` with a fresh 32-byte nonce.
//! 2. The dialing node answers `Hello` with its own nonce and
//!    `HMAC-SHA256(secret, "dialer" • both nonces • dialer id • acceptor id)`.
//! 3. The acceptor checks it (constant time) and answers `Welcome` with the same MAC over
//!    `"acceptor"`, which the dialer checks in turn.
//!
//! The secret never crosses the wire; fresh nonces on both sides make every proof single-use, and
//! the role and both ids inside the MAC stop a proof being replayed or reflected elsewhere.
//!
//! Over TLS, both MACs also cover the session's channel binding (the TLS exporter value,
//! [`crate::tls::binding`]), which both ends derive on their own and which differs on every
//! connection: someone who relays or records a handshake cannot use it on a connection of their
//! own, even one to the same node. Each side uses its own end's value, so a TLS-terminating
//! proxy in between (two sessions, two values) makes every proof fail: peers must reach each
//! other end to end over TLS, or both plain. A plain link has no binding; its MAC input is the
//! original one (`concord-peer-v1`), so nodes from before TLS still link over plain links.

use std::time::Duration;

use bytes::Bytes;
use concord_crdt::yrs::encoding::write::Write;
use concord_crdt::{NodeId, PeerMessage};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::socket::PeerSocket;

/// How long each handshake step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Who a node is, as told to its peers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_id: NodeId,
    pub region: String,
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "peer did not prove the shared secret (a wrong --peer-secret, or a TLS-terminating proxy \
         between the nodes: the proof is bound to the TLS session)"
    )]
    BadProof,
    #[error("peer has this node's own id {0}")]
    SameNode(NodeId),
    #[error("peer sent {0} during the handshake")]
    Unexpected(&'static str),
    #[error("peer link closed during the handshake")]
    Closed,
    #[error("peer did not answer the handshake within {STEP_TIMEOUT:?}")]
    Timeout,
}

fn proof(
    secret: &[u8],
    role: &str,
    binding: &[u8],
    acceptor_nonce: &[u8],
    dialer_nonce: &[u8],
    signer: &NodeId,
    other: &NodeId,
) -> Hmac<Sha256> {
    let mut input = Vec::with_capacity(192);
    if binding.is_empty() {
        input.write_string("concord-peer-v1");
        input.write_string(role);
    } else {
        input.write_string("concord-peer-v2-tls");
        input.write_string(role);
        input.write_buf(binding);
    }
    input.write_buf(acceptor_nonce);
    input.write_buf(dialer_nonce);
    input.write_string(signer.as_str());
    input.write_string(other.as_str());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(&input);
    mac
}

fn nonce() -> Vec<u8> {
    rand::random::<[u8; 32]>().to_vec()
}

async fn send(sock: &PeerSocket, msg: PeerMessage) -> Result<(), AuthError> {
    sock.outgoing
        .send(Bytes::from(msg.encode()))
        .await
        .map_err(|_| AuthError::Closed)
}

async fn recv(sock: &mut PeerSocket) -> Result<PeerMessage, AuthError> {
    let bytes = tokio::time::timeout(STEP_TIMEOUT, sock.incoming.recv())
        .await
        .map_err(|_| AuthError::Timeout)?
        .ok_or(AuthError::Closed)?;
    PeerMessage::decode(&bytes).map_err(|_| AuthError::Unexpected("an undecodable message"))
}

/// The accepting side. Returns who the authenticated dialer is. `binding`: the connection's
/// TLS exporter value, empty on a plain connection.
pub async fn accept(
    sock: &mut PeerSocket,
    me: &Identity,
    secret: &[u8],
    binding: &[u8],
) -> Result<Identity, AuthError> {
    let acceptor_nonce = nonce();
    send(
        sock,
        PeerMessage::Challenge {
            node_id: me.node_id.clone(),
            region: me.region.clone(),
            url: me.url.clone(),
            nonce: acceptor_nonce.clone(),
        },
    )
    .await?;
    let PeerMessage::Hello {
        node_id,
        region,
        url,
        nonce: dialer_nonce,
        mac,
    } = recv(sock).await?
    else {
        return Err(AuthError::Unexpected("something other than Hello"));
    };
    proof(
        secret,
        "dialer",
        binding,
        &acceptor_nonce,
        &dialer_nonce,
        &node_id,
        &me.node_id,
    )
    .verify_slice(&mac)
    .map_err(|_| AuthError::BadProof)?;
    if node_id == me.node_id {
        return Err(AuthError::SameNode(node_id));
    }
    let mac = proof(
        secret,
        "acceptor",
        binding,
        &acceptor_nonce,
        &dialer_nonce,
        &me.node_id,
        &node_id,
    );
    send(
        sock,
        PeerMessage::Welcome {
            mac: mac.finalize().into_bytes().to_vec(),
        },
    )
    .await?;
    Ok(Identity {
        node_id,
        region,
        url,
    })
}

/// The dialing side. Returns who the authenticated acceptor is. `binding` as for [`accept`].
pub async fn dial(
    sock: &mut PeerSocket,
    me: &Identity,
    secret: &[u8],
    binding: &[u8],
) -> Result<Identity, AuthError> {
    let PeerMessage::Challenge {
        node_id,
        region,
        url,
        nonce: acceptor_nonce,
    } = recv(sock).await?
    else {
        return Err(AuthError::Unexpected("something other than Challenge"));
    };
    if node_id == me.node_id {
        return Err(AuthError::SameNode(node_id));
    }
    let dialer_nonce = nonce();
    let mac = proof(
        secret,
        "dialer",
        binding,
        &acceptor_nonce,
        &dialer_nonce,
        &me.node_id,
        &node_id,
    );
    send(
        sock,
        PeerMessage::Hello {
            node_id: me.node_id.clone(),
            region: me.region.clone(),
            url: me.url.clone(),
            nonce: dialer_nonce.clone(),
            mac: mac.finalize().into_bytes().to_vec(),
        },
    )
    .await?;
    let PeerMessage::Welcome { mac } = recv(sock).await? else {
        return Err(AuthError::Unexpected("something other than Welcome"));
    };
    proof(
        secret,
        "acceptor",
        binding,
        &acceptor_nonce,
        &dialer_nonce,
        &node_id,
        &me.node_id,
    )
    .verify_slice(&mac)
    .map_err(|_| AuthError::BadProof)?;
    Ok(Identity {
        node_id,
        region,
        url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_role_binding_nonces_and_ids() {
        let (a, b) = (NodeId::parse("a").unwrap(), NodeId::parse("b").unwrap());
        for binding in [&b""[..], &[7u8; 32]] {
            let base = proof(b"s", "dialer", binding, b"n1", b"n2", &a, &b)
                .finalize()
                .into_bytes();
            let mut others = vec![
                proof(b"t", "dialer", binding, b"n1", b"n2", &a, &b),
                proof(b"s", "acceptor", binding, b"n1", b"n2", &a, &b),
                proof(b"s", "dialer", binding, b"n9", b"n2", &a, &b),
                proof(b"s", "dialer", binding, b"n1", b"n2", &b, &a),
                // Another connection: another TLS session...
                proof(b"s", "dialer", &[8u8; 32], b"n1", b"n2", &a, &b),
            ];
            if !binding.is_empty() {
                // ...or a plain one.
                others.push(proof(b"s", "dialer", b"", b"n1", b"n2", &a, &b));
            }
            for other in others {
                assert_ne!(other.finalize().into_bytes(), base);
            }
            assert!(
                proof(b"s", "dialer", binding, b"n1", b"n2", &a, &b)
                    .verify_slice(&base)
                    .is_ok()
            );
        }
    }

    /// Two sockets joined back to back, as a link would join them.
    fn pair() -> (PeerSocket, PeerSocket) {
        let (a_out, b_in) = tokio::sync::mpsc::channel(8);
        let (b_out, a_in) = tokio::sync::mpsc::channel(8);
        let control = || {
            std::sync::Arc::new(crate::control::Control::new(
                tokio_util::sync::CancellationToken::new(),
            ))
        };
        (
            PeerSocket {
                outgoing: a_out,
                incoming: a_in,
                control: control(),
            },
            PeerSocket {
                outgoing: b_out,
                incoming: b_in,
                control: control(),
            },
        )
    }

    fn identity(id: &str) -> Identity {
        Identity {
            node_id: NodeId::parse(id).unwrap(),
            region: "r".into(),
            url: String::new(),
        }
    }

    /// Runs both sides with the bindings each end sees; returns what the acceptor concluded.
    async fn handshake(acceptor_sees: &[u8], dialer_sees: &[u8]) -> Result<Identity, AuthError> {
        let (mut x, mut y) = pair();
        let (a, d) = (identity("acceptor"), identity("dialer"));
        let acceptor = async move {
            let accepted = accept(&mut x, &a, b"secret", acceptor_sees).await;
            drop(x); // a refusing acceptor hangs up, so the dialer stops waiting
            accepted
        };
        let (accepted, _) = tokio::join!(acceptor, dial(&mut y, &d, b"secret", dialer_sees));
        accepted
    }

    #[tokio::test]
    async fn a_handshake_passes_only_when_both_ends_see_the_same_session() {
        assert_eq!(
            handshake(b"", b"").await.unwrap().node_id.as_str(),
            "dialer"
        );
        assert_eq!(
            handshake(&[1; 32], &[1; 32])
                .await
                .unwrap()
                .node_id
                .as_str(),
            "dialer"
        );
        // A relayed handshake: the dialer's session is not the one the acceptor is on.
        for (acceptor_sees, dialer_sees) in [
            (&[1u8; 32][..], &[2u8; 32][..]),
            (&[1; 32], b""),
            (b"", &[1; 32]),
        ] {
            let refused = handshake(acceptor_sees, dialer_sees).await;
            assert!(matches!(refused, Err(AuthError::BadProof)), "{refused:?}");
        }
    }
}
