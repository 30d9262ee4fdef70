//! Frames that break the WebSocket protocol close that connection with the
//! right code; the room carries on.

use crate::common::{self, PATIENCE, Peer, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// An upgraded raw socket, past the welcome and join frames.
async fn raw_client(server: &TestServer) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = common::upgrade_request("/?name=raw");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream
}

/// Reads frames until a Close; returns its code.
async fn close_code(stream: &mut TcpStream) -> u16 {
    loop {
        let mut head = [0u8; 2];
        timeout(PATIENCE, stream.read_exact(&mut head)).await.expect("in time").expect("read");
        if head.starts_with(b"HT") {
            // The 101 response: skip to the end of its head.
            let mut last = [0u8; 4];
            while &last != b"\r\n\r\n" {
                let byte = stream.read_u8().await.expect("read");
                last = [last[1], last[2], last[3], byte];
            }
            continue;
        }
        let len = match head[1] & 0x7f {
            126 => usize::from(stream.read_u16().await.expect("len")),
            127 => usize::try_from(stream.read_u64().await.expect("len")).expect("fits"),
            n => usize::from(n),
        };
        let mut payload = vec![0; len];
        stream.read_exact(&mut payload).await.expect("payload");
        if head[0] & 0x0f == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_an_unmasked_frame_with_1002() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;

    let mut raw = raw_client(&server).await;
    alice.expect("* raw joined").await;
    // A masked (all-zero key) text frame holding 0xff 0xfe: not UTF-8.
    raw.write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe]).await.expect("write");
    assert_eq!(close_code(&mut raw).await, 1007);
    alice.expect("* raw left").await;

    let mut raw = raw_client(&server).await;
    alice.expect("* raw joined").await;
    // Clients must mask their frames.
    raw.write_all(&[0x81, 0x02, b'h', b'i']).await.expect("write");
    assert_eq!(close_code(&mut raw).await, 1002);
    alice.expect("* raw left").await;

    alice.send("unharmed").await;
    alice.expect("alice: unharmed").await;
    server.stop().await;
}

#[tokio::test]
async fn a_fragmented_message_over_the_size_limit_closes_with_1009() {
    let config =
        chat::server::config::ServerConfig { max_message_bytes: 1024, ..Default::default() };
    let server = TestServer::with(config).await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut raw = raw_client(&server).await;
    alice.expect("* raw joined").await;

    // Two masked fragments of 2,100 bytes (0x7e: 16-bit length 0x0834; zero
    // mask key): each under the frame limit (3 × 1,024 + 1,024 bytes), together
    // over it.
    let fragment = |first: bool, last: bool| {
        // Text for the first fragment, continuation after.
        let opcode = u8::from(first);
        let fin = if last { 0x80 } else { 0x00 };
        let mut frame = vec![fin | opcode, 0x80 | 0x7e, 0x08, 0x34, 0, 0, 0, 0];
        frame.extend(std::iter::repeat_n(b'a', 2100));
        frame
    };
    raw.write_all(&fragment(true, false)).await.expect("write");
    raw.write_all(&fragment(false, true)).await.expect("write");
    assert_eq!(close_code(&mut raw).await, 1009);
    alice.expect("* raw left").await;
    alice.send("unharmed").await;
    alice.expect("alice: unharmed").await;
    server.stop().await;
}

#[tokio::test]
async fn reserved_bits_and_unknown_opcodes_close_with_1002() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    // RSV1 set without an extension; opcode 0x3 (reserved); a fragmented ping.
    let frames: [&[u8]; 3] = [
        &[0xC1, 0x82, 0, 0, 0, 0, b'h', b'i'],
        &[0x83, 0x80, 0, 0, 0, 0],
        &[0x09, 0x80, 0, 0, 0, 0],
    ];
    for frame in frames {
        let mut raw = raw_client(&server).await;
        alice.expect("* raw joined").await;
        raw.write_all(frame).await.expect("write");
        assert_eq!(close_code(&mut raw).await, 1002, "{frame:x?}");
        alice.expect("* raw left").await;
    }
    alice.send("unharmed").await;
    alice.expect("alice: unharmed").await;
    server.stop().await;
}

#[tokio::test]
async fn a_reset_mid_frame_frees_the_client_and_announces_its_leave() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut raw = raw_client(&server).await;
    alice.expect("* raw joined").await;
    // Half a frame (a header announcing 100 bytes, then 3 of them), then a
    // reset instead of a close.
    raw.write_all(&[0x81, 0x80 | 0x64, 0, 0, 0, 0, b'a', b'b', b'c']).await.expect("write");
    raw.set_zero_linger().expect("SO_LINGER 0");
    drop(raw);
    alice.expect("* raw left").await;
    alice.send("/who").await;
    alice.expect("* 1 in lobby: alice").await;
    server.stop().await;
}

#[tokio::test]
async fn many_connections_from_one_address_are_all_served_and_all_freed() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut crowd = Vec::new();
    for i in 0..50 {
        crowd.push(Peer::named(&server, &format!("p{i}")).await);
        alice.expect(&format!("* p{i} joined")).await;
    }
    alice.send("/who").await;
    alice.wait_for("* 51 in lobby: alice, p0, p1, p10, p11, p12, p13, p14, p15, p16, p17, p18, p19, p2, p20, p21, p22, p23, p24, p25, p26, p27, p28, p29, p3, p30, p31, p32, p33, p34, p35, p36, p37, p38, p39, p4, p40, p41, p42, p43, p44, p45, p46, p47, p48, p49, p5, p6, p7, p8, p9").await;
    drop(crowd);
    for _ in 0..50 {
        let line = alice.next().await;
        assert!(line.starts_with("* p") && line.ends_with(" left"), "{line}");
    }
    alice.send("/who").await;
    alice.expect("* 1 in lobby: alice").await;
    server.stop().await;
}
