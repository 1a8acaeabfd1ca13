//! gRPC through the real dataplane with tonic on both ends (hand-written prost messages, tonic's
//! generic client and server, no codegen): the four call shapes, a failing upstream's status
//! in headers and in trailers, a deadline from `grpc-timeout`, and a unary call over HTTP/3.

mod common;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::*;
use futures_util::StreamExt;
use http::uri::PathAndQuery;
use http::{Request, StatusCode, Uri};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

fn msg(text: &str, n: u32) -> Msg {
    Msg {
        text: text.into(),
        n,
    }
}

type MsgStream = futures_util::stream::BoxStream<'static, Result<Msg, Status>>;

/// The test service: `/test.Echo/{Unary,Fail,Slow,Count,Sum,Chat,Abort}`.
async fn grpc_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let mut g = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
                        let resp = match req.uri().path() {
                            "/test.Echo/Unary" => {
                                let s = tower::service_fn(|r: tonic::Request<Msg>| async move {
                                    let m = r.into_inner();
                                    Ok::<_, Status>(tonic::Response::new(msg(
                                        &format!("echo {}", m.text),
                                        m.n + 1,
                                    )))
                                });
                                g.unary(s, req).await
                            }
                            "/test.Echo/Fail" => {
                                let s = tower::service_fn(|_r: tonic::Request<Msg>| async move {
                                    Err::<tonic::Response<Msg>, _>(Status::failed_precondition(
                                        "backend says no",
                                    ))
                                });
                                g.unary(s, req).await
                            }
                            "/test.Echo/Slow" => {
                                let s = tower::service_fn(|r: tonic::Request<Msg>| async move {
                                    tokio::time::sleep(Duration::from_secs(60)).await;
                                    Ok::<_, Status>(tonic::Response::new(r.into_inner()))
                                });
                                g.unary(s, req).await
                            }
                            "/test.Echo/Count" => {
                                // Server streaming: n messages.
                                let s = tower::service_fn(|r: tonic::Request<Msg>| async move {
                                    let m = r.into_inner();
                                    let items: Vec<Result<Msg, Status>> =
                                        (1..=m.n).map(|i| Ok(msg(&m.text, i))).collect();
                                    let st: MsgStream = futures_util::stream::iter(items).boxed();
                                    Ok::<_, Status>(tonic::Response::new(st))
                                });
                                g.server_streaming(s, req).await
                            }
                            "/test.Echo/Abort" => {
                                // Two messages, then an error status in the trailers.
                                let s = tower::service_fn(|_r: tonic::Request<Msg>| async move {
                                    let items = vec![
                                        Ok(msg("a", 1)),
                                        Ok(msg("b", 2)),
                                        Err(Status::aborted("midway")),
                                    ];
                                    let st: MsgStream = futures_util::stream::iter(items).boxed();
                                    Ok::<_, Status>(tonic::Response::new(st))
                                });
                                g.server_streaming(s, req).await
                            }
                            "/test.Echo/Sum" => {
                                // Client streaming: concatenate texts, add numbers.
                                let s = tower::service_fn(
                                    |r: tonic::Request<tonic::Streaming<Msg>>| async move {
                                        let mut st = r.into_inner();
                                        let mut out = msg("", 0);
                                        while let Some(m) = st.next().await {
                                            let m = m?;
                                            out.text.push_str(&m.text);
                                            out.n += m.n;
                                        }
                                        Ok::<_, Status>(tonic::Response::new(out))
                                    },
                                );
                                g.client_streaming(s, req).await
                            }
                            "/test.Echo/Chat" => {
                                // Bidi: answers each message as it comes.
                                let s = tower::service_fn(
                                    |r: tonic::Request<tonic::Streaming<Msg>>| async move {
                                        let st: MsgStream = r
                                            .into_inner()
                                            .map(|m| {
                                                m.map(|m| msg(&format!("re: {}", m.text), m.n * 10))
                                            })
                                            .boxed();
                                        Ok::<_, Status>(tonic::Response::new(st))
                                    },
                                );
                                g.streaming(s, req).await
                            }
                            _ => Status::unimplemented("no such method").into_http(),
                        };
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .http2_only()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    addr
}

type GrpcClient = tonic::client::Grpc<
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        tonic::body::Body,
    >,
>;

fn grpc_client(port: u16) -> GrpcClient {
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let origin: Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
    tonic::client::Grpc::with_origin(http, origin)
}

fn path(p: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(p)
}

fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

async fn guard<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("hang guard expired: {what}"))
}

fn config(port: u16, tls_port: u16, backend: SocketAddr, down: u16) -> String {
    format!(
        r#"
listeners:
  - {{ name: http, address: "127.0.0.1:{port}", protocol: http }}
  - {{ name: https, address: "127.0.0.1:{tls_port}", protocol: https }}
backends:
  grpc: {{ endpoints: ["{backend}"], protocol: h2c }}
  down: {{ endpoints: ["127.0.0.1:{down}"], protocol: h2c }}
routes:
  - name: echo
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /test.Echo }} }}]
        backendRefs: [{{ name: grpc }}]
      - matches: [{{ path: {{ type: PathPrefix, value: /test.Down }} }}]
        backendRefs: [{{ name: down }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_calls_of_every_shape_through_the_proxy() {
    let backend = grpc_backend().await;
    let (port, tls_port, down) = (free_port(), free_port(), free_port());
    let _dp = Dataplane::start(&config(port, tls_port, backend, down)).await;
    let mut c = grpc_client(port);
    guard("ready", c.ready()).await.expect("ready");

    // Unary: the reply and its trailers (grpc-status 0) come back.
    let r = guard(
        "unary",
        c.unary(
            tonic::Request::new(msg("hi", 41)),
            path("/test.Echo/Unary"),
            codec(),
        ),
    )
    .await
    .expect("unary through the proxy");
    assert_eq!(r.into_inner(), msg("echo hi", 42));

    // Server streaming.
    c.ready().await.expect("ready");
    let r = guard(
        "server streaming",
        c.server_streaming(
            tonic::Request::new(msg("tick", 5)),
            path("/test.Echo/Count"),
            codec(),
        ),
    )
    .await
    .expect("server streaming");
    let mut st = r.into_inner();
    let mut got = Vec::new();
    while let Some(m) = guard("next", st.message()).await.expect("stream item") {
        got.push(m.n);
    }
    assert_eq!(got, [1, 2, 3, 4, 5]);

    // Client streaming.
    c.ready().await.expect("ready");
    let input = futures_util::stream::iter(vec![msg("a", 1), msg("b", 2), msg("c", 3)]);
    let r = guard(
        "client streaming",
        c.client_streaming(tonic::Request::new(input), path("/test.Echo/Sum"), codec()),
    )
    .await
    .expect("client streaming");
    assert_eq!(r.into_inner(), msg("abc", 6));

    // Bidi: each reply is read before the next message is sent.
    c.ready().await.expect("ready");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    tx.send(msg("one", 1)).unwrap();
    let r = guard(
        "bidi",
        c.streaming(
            tonic::Request::new(outbound),
            path("/test.Echo/Chat"),
            codec(),
        ),
    )
    .await
    .expect("bidi");
    let mut replies = r.into_inner();
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        if i > 0 {
            tx.send(msg(text, i as u32 + 1)).unwrap();
        }
        let m = guard("bidi reply", replies.message())
            .await
            .expect("reply")
            .expect("stream open");
        assert_eq!(m, msg(&format!("re: {text}"), (i as u32 + 1) * 10));
    }
    drop(tx);
    assert!(guard("bidi end", replies.message())
        .await
        .expect("end")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_failures_and_deadlines() {
    let backend = grpc_backend().await;
    let (port, tls_port, down) = (free_port(), free_port(), free_port());
    let _dp = Dataplane::start(&config(port, tls_port, backend, down)).await;
    let mut c = grpc_client(port);
    guard("ready", c.ready()).await.expect("ready");

    // The upstream's own status (trailers-only) passes through.
    let e = guard(
        "fail",
        c.unary(
            tonic::Request::new(msg("x", 0)),
            path("/test.Echo/Fail"),
            codec(),
        ),
    )
    .await
    .expect_err("failing call");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.message(), "backend says no");

    // A status in the trailers after messages passes through too.
    c.ready().await.expect("ready");
    let r = guard(
        "abort",
        c.server_streaming(
            tonic::Request::new(msg("x", 0)),
            path("/test.Echo/Abort"),
            codec(),
        ),
    )
    .await
    .expect("stream starts");
    let mut st = r.into_inner();
    assert_eq!(st.message().await.expect("first"), Some(msg("a", 1)));
    assert_eq!(st.message().await.expect("second"), Some(msg("b", 2)));
    let e = st.message().await.expect_err("status in trailers");
    assert_eq!(e.code(), Code::Aborted);
    assert_eq!(e.message(), "midway");

    // grpc-timeout is the deadline: the proxy answers DEADLINE_EXCEEDED.
    c.ready().await.expect("ready");
    let mut req = tonic::Request::new(msg("slow", 0));
    req.set_timeout(Duration::from_millis(300));
    let e = guard("deadline", c.unary(req, path("/test.Echo/Slow"), codec()))
        .await
        .expect_err("deadline");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");

    // Proxy-made errors as gRPC statuses.
    c.ready().await.expect("ready");
    let e = guard(
        "no route",
        c.unary(
            tonic::Request::new(msg("x", 0)),
            path("/other.Svc/Call"),
            codec(),
        ),
    )
    .await
    .expect_err("no route");
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    c.ready().await.expect("ready");
    let e = guard(
        "down",
        c.unary(
            tonic::Request::new(msg("x", 0)),
            path("/test.Down/Call"),
            codec(),
        ),
    )
    .await
    .expect_err("upstream down");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // The connection is still good.
    c.ready().await.expect("ready");
    let r = c
        .unary(
            tonic::Request::new(msg("again", 1)),
            path("/test.Echo/Unary"),
            codec(),
        )
        .await
        .expect("unary after errors");
    assert_eq!(r.into_inner(), msg("echo again", 2));
}

/// gRPC framing by hand: one length-prefixed message.
fn frame(m: &Msg) -> Bytes {
    let body = prost::Message::encode_to_vec(m);
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(0);
    b.put_u32(body.len() as u32);
    b.put_slice(&body);
    b.freeze()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_over_http3() {
    let backend = grpc_backend().await;
    let (port, tls_port, down) = (free_port(), free_port(), free_port());
    let _dp = Dataplane::start(&config(port, tls_port, backend, down)).await;
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let conn = guard(
        "h3 connect",
        weir_bench::h3client::connect(addr, None, true),
    )
    .await
    .expect("h3 connect");
    let req = Request::post("https://127.0.0.1/test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame(&msg("h3", 1)))
        .unwrap();
    let r = guard("h3 unary", conn.request(req))
        .await
        .expect("h3 request");
    assert_eq!(r.status, StatusCode::OK);
    let mut body = r.body.clone();
    assert!(body.len() >= 5, "no message: {body:?}");
    body.advance(5);
    let m: Msg = prost::Message::decode(body).expect("decode reply");
    assert_eq!(m, msg("echo h3", 2));
    let trailers = r.trailers.expect("trailers over HTTP/3");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );

    // A proxy error over HTTP/3 is a gRPC status too.
    let req = Request::post("https://127.0.0.1/nowhere.Svc/Call")
        .header("content-type", "application/grpc")
        .body(frame(&msg("x", 0)))
        .unwrap();
    let r = guard("h3 no route", conn.request(req))
        .await
        .expect("h3 request");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"12"[..])
    );
    conn.close().await;
}
