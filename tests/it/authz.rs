//! Authorization by the database: a PostgREST-style setup (authenticator, anon and web roles, a
//! table with a row-level security policy reading `request.jwt.claims`, a SECURITY INVOKER check
//! function), live revocation on two nodes, writes through a SQL function, hostile input, and
//! pooled connections left clean. Real roles, real policies, real sockets.

use std::time::Instant;

use serde_json::{Value, json};

use crate::common::*;

/// The roles and objects of one test (roles are cluster-wide: named after the test database).
struct Setup {
    /// The database, as the superuser (the test's own tool).
    admin: String,
    /// The database, as the authenticator (what pgws connects with).
    uri: String,
    authenticator: String,
    anon: String,
    web: String,
    /// The cluster's superuser (the test's own login).
    superuser: String,
}

/// `CREATE ROLE … ; CREATE SCHEMA api; …` as in docs/AUTHORIZATION.md.
async fn postgrest_setup() -> Setup {
    let admin = fresh_db().await;
    let dbname = admin
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .expect("dbname")
        .to_string();
    let user = admin
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("user="))
        .expect("user")
        .to_string();
    let authenticator = format!("{dbname}_authenticator");
    let anon = format!("{dbname}_anon");
    let web = format!("{dbname}_web");
    let uri = admin.replace(&format!("user={user}"), &format!("user={authenticator}"));
    let db = pg(&admin).await;
    db.batch_execute(&format!(
        r#"
        CREATE ROLE {anon} NOLOGIN;
        CREATE ROLE {web} NOLOGIN;
        CREATE ROLE "{web}_q""uote" NOLOGIN;
        CREATE ROLE {authenticator} LOGIN NOINHERIT;
        GRANT {anon}, {web}, "{web}_q""uote" TO {authenticator};

        CREATE SCHEMA api;
        GRANT USAGE ON SCHEMA api TO {anon}, {web}, "{web}_q""uote";
        CREATE TABLE api.channel_members (
          channel   text NOT NULL,
          sub       text NOT NULL,              -- '*': everyone, the anonymous role included
          can_write boolean NOT NULL DEFAULT false
        );
        ALTER TABLE api.channel_members ENABLE ROW LEVEL SECURITY;
        GRANT SELECT ON api.channel_members TO {anon}, {web}, "{web}_q""uote";
        CREATE POLICY members ON api.channel_members FOR SELECT
          USING (sub = '*' OR sub = current_setting('request.jwt.claims', true)::json->>'sub');

        CREATE FUNCTION api.can_use_channel() RETURNS boolean
          LANGUAGE sql STABLE SECURITY INVOKER AS $$
            SELECT EXISTS (
              SELECT 1 FROM api.channel_members m
              WHERE m.channel = current_setting('pgws.channel')
                AND (current_setting('pgws.mode') NOT LIKE '%w%' OR m.can_write))
          $$;

        -- What a check sees: allowed only when it runs as the token's role (the anonymous role
        -- for tokens without one), on a session of the authenticator, with no setting left by an
        -- earlier call on the same connection.
        CREATE FUNCTION api.whoami() RETURNS boolean LANGUAGE sql STABLE SECURITY INVOKER AS $$
          SELECT current_user = coalesce(current_setting('request.jwt.claims')::json->>'role', '{anon}')
             AND session_user = '{authenticator}'
             AND coalesce(current_setting('app.leak', true), '') = ''
             AND current_setting('pgws.channel') = 'whoami'
        $$;

        CREATE FUNCTION api.hostile() RETURNS boolean LANGUAGE plpgsql SECURITY INVOKER AS $$
        BEGIN
          CASE current_setting('pgws.channel')
            WHEN 'forever' THEN PERFORM pg_sleep(3600); RETURN true;
            WHEN 'raise' THEN RAISE EXCEPTION 'channel raise is cursed' USING ERRCODE = 'P0001';
            WHEN 'whoami' THEN RETURN api.whoami();
            WHEN 'leak' THEN
              -- A check that tries to leave a role and a setting on the session.
              PERFORM set_config('role', '{anon}', false);
              PERFORM set_config('app.leak', 'left behind', false);
              RETURN true;
            ELSE RETURN true;
          END CASE;
        END $$;

        CREATE FUNCTION api.always_raises() RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'no, never' USING ERRCODE = '42501'; END $$;

        CREATE TABLE api.messages (
          id      bigint GENERATED ALWAYS AS IDENTITY,
          channel text, body text, author text, who text
        );
        GRANT SELECT, INSERT ON api.messages TO {web};

        CREATE FUNCTION api.post(channel text, message text) RETURNS text
          LANGUAGE plpgsql SECURITY INVOKER AS $$
        BEGIN
          IF message = 'raise' THEN
            RAISE EXCEPTION 'messages saying raise are refused' USING ERRCODE = 'P0001';
          ELSIF message = 'sleep' THEN
            PERFORM pg_sleep(3600);
          ELSIF message = 'leak' THEN
            -- A function that tries to leave a role and a setting on the session.
            PERFORM set_config('role', '{anon}', false);
            PERFORM set_config('app.leak', 'left behind', false);
            RETURN 'leaked?';
          END IF;
          INSERT INTO api.messages (channel, body, author, who)
            VALUES (channel, message, current_setting('request.jwt.claims')::json->>'sub',
                    current_user || coalesce('+' || nullif(current_setting('app.leak', true), ''), ''));
          PERFORM pg_notify('{LISTEN}', json_build_object(
            'channel', channel, 'payload', upper(message), 'by', current_user)::text);
          RETURN 'stored';
        END $$;
        "#
    ))
    .await
    .expect("PostgREST-style setup");
    Setup {
        admin,
        uri,
        authenticator,
        anon,
        web,
        superuser: user,
    }
}

impl Setup {
    async fn admit(&self, channel: &str, sub: &str, can_write: bool) {
        pg(&self.admin)
            .await
            .execute(
                "INSERT INTO api.channel_members VALUES ($1, $2, $3)",
                &[&channel, &sub, &can_write],
            )
            .await
            .expect("insert member");
    }

    fn token(&self, sub: &str, mode: &str) -> String {
        token(json!({"role": self.web, "sub": sub, "mode": mode}))
    }
}

/// `POST path` with a `text/plain` body.
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn close_code(
    frame: &Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) -> (u16, String) {
    let f = frame.as_ref().expect("a close frame");
    (u16::from(f.code), f.reason.to_string())
}

#[tokio::test]
async fn a_postgrest_setup_authorizes_channels() {
    let s = postgrest_setup().await;
    s.admit("chat", "alice", false).await;
    s.admit("news", "*", false).await;
    let server = start_on(
        &s.uri,
        &[
            "--authz-function",
            "api.can_use_channel",
            "--authz-anon-role",
            &s.anon,
            "--default-mode",
            "r",
            "--admin-address",
            "127.0.0.1:0",
        ],
    )
    .await;
    // Allowed by the policy: the socket opens and receives.
    let alice = s.token("alice", "r");
    let mut ws = connect(&server.url(&format!("/chat/{alice}"))).await;
    let db = pg(&s.admin).await;
    notify(
        &db,
        LISTEN,
        &json!({"channel":"chat","payload":"hi"}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["payload"], "hi");
    // A second socket of the same token is answered from the cache.
    let _again = connect(&server.url(&format!("/chat/{alice}"))).await;
    assert!(server.metric("pgws_authz_cache_hits_total").await >= 1.0);
    // Refused: another subject (the cache never lends alice's answer), a write on a read-only
    // membership, a channel nobody may use.
    let (status, body) = refused(&server.url(&format!("/chat/{}", s.token("bob", "r")))).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("does not allow channel 'chat' (mode r)"),
        "{body}"
    );
    let (status, body) = refused(&server.url(&format!("/chat/{}", s.token("alice", "rw")))).await;
    assert_eq!((status, body.contains("mode rw")), (403, true), "{body}");
    let (status, _) = refused(&server.url(&format!("/secret/{alice}"))).await;
    assert_eq!(status, 403);
    // A token without a role claim runs as the anonymous role: everyone's channel, not alice's.
    let anon = token(json!({"sub":"alice"}));
    let _news = connect(&server.url(&format!("/news/{anon}"))).await;
    // …the policy reads the claims, so an anonymous token naming alice's sub is still alice's
    // (exactly as with PostgREST); without a sub it is refused.
    let _anon_alice = connect(&server.url(&format!("/chat/{anon}"))).await;
    let (status, _) = refused(&server.url(&format!("/chat/{}", token(json!({}))))).await;
    assert_eq!(status, 403);
    // Event streams are admitted by the same checks.
    let sse = crate::sse::open(server.addr, &format!("/chat/{}", s.token("bob", "r")), &[]).await;
    assert_eq!(sse.err().map(|e| e.0), Some(403));
    assert!(
        crate::sse::open(server.addr, &format!("/news/{alice}"), &[])
            .await
            .is_ok()
    );
    // HTTP publish is checked in mode w.
    let (status, body) = post(
        server.addr,
        &format!("/chat/{}", s.token("alice", "w")),
        "x",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        server
            .metric("pgws_authz_checks_total{reason=\"refused\"}")
            .await
            >= 4.0
    );
    assert!(
        server
            .metric("pgws_handshakes_refused_total{reason=\"authz_refused\"}")
            .await
            >= 3.0
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn hostile_roles_and_claims_are_refused_without_harm() {
    let s = postgrest_setup().await;
    s.admit("chat", "*", false).await;
    s.admit("whoami", "*", false).await;
    let server = start_on(
        &s.uri,
        &["--authz-function", "api.hostile", "--default-mode", "r"],
    )
    .await;
    let cases: Vec<(Value, &str)> = vec![
        (json!("nobody_at_all"), "cannot be used"),
        (
            json!("x'; DROP TABLE api.channel_members; --"),
            "cannot be used",
        ),
        (json!("a\"b"), "cannot be used"),
        (json!("web\u{0}"), "NUL"),
        (json!("r".repeat(64 * 1024)), "63-byte"),
        // PostgreSQL would truncate 64 bytes to 63: a real role's name plus one byte.
        (
            json!(format!("{}{}", s.web, "x".repeat(63 - s.web.len() + 1))),
            "63-byte",
        ),
        (json!(""), "empty"),
        (json!({"nested":"role"}), "not a string"),
        (json!(["a"]), "not a string"),
        // The cluster's superuser exists, but the authenticator is not a member of it.
        (json!(s.superuser.clone()), "cannot be used"),
    ];
    for (role, why) in cases {
        let t = token(json!({"role": role, "sub": "mallory"}));
        // In the Authorization header: a 64 KB role makes a token longer than a client's URL.
        let (status, _, body) = get(
            server.addr,
            "GET",
            "/chat",
            &format!(
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {t}\r\n"
            ),
        )
        .await;
        assert_eq!(status, 403, "{role}: {body}");
        assert!(body.contains(why), "{role}: {body}");
    }
    // A role whose name holds a double quote, bound exactly as written.
    let quoted = format!("{}_q\"uote", s.web);
    let t = token(json!({"role": quoted, "sub": "q"}));
    let _ws = connect(&server.url(&format!("/whoami/{t}"))).await;
    // Claims that are not an object are not a token at all.
    let not_object = sign(json!(["role", s.web]), SECRET.as_bytes());
    let (status, _) = refused(&server.url(&format!("/chat/{not_object}"))).await;
    assert_eq!(status, 400);
    let string_claims = sign(json!("just a string"), SECRET.as_bytes());
    let (status, _) = refused(&server.url(&format!("/chat/{string_claims}"))).await;
    assert_eq!(status, 400);
    // Nothing was harmed and the server still serves.
    let n: i64 = pg(&s.admin)
        .await
        .query_one("SELECT count(*) FROM api.channel_members", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let _ok = connect(&server.url(&format!("/chat/{}", s.token("x", "r")))).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn no_role_or_setting_is_left_on_a_pooled_connection() {
    let s = postgrest_setup().await;
    // One connection each for checks and writes: every call below reuses the same one.
    let server = start_on(
        &s.uri,
        &[
            "--authz-function",
            "api.hostile",
            "--authz-write-function",
            "api.post",
            "--authz-anon-role",
            &s.anon,
            "--authz-pool-size",
            "1",
            "--authz-write-pool-size",
            "1",
            "--authz-timeout",
            "300",
            "--authz-write-timeout",
            "300",
            "--default-mode",
            "r",
            "--admin-address",
            "127.0.0.1:0",
        ],
    )
    .await;
    let whoami = |t: &str| server.url(&format!("/whoami/{t}"));
    let _first = connect(&whoami(&s.token("a", "r"))).await;
    // A check that sets a role and a setting for the session: its transaction is rolled back.
    let _leak = connect(&server.url(&format!("/leak/{}", s.token("a", "r")))).await;
    // A check that never returns: cancelled by its statement_timeout, answered 503.
    let (status, body) = refused(&server.url(&format!("/forever/{}", s.token("a", "r")))).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no answer within 300 ms"), "{body}");
    // A check that raises: refused with its SQLSTATE.
    let (status, body) = refused(&server.url(&format!("/raise/{}", s.token("a", "r")))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("P0001") && body.contains("cursed"), "{body}");
    // A write that sets a role and a setting for the session, then commits.
    let (status, body) = post(
        server.addr,
        &format!("/whoami/{}", s.token("a", "w")),
        "leak",
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"published":1,"results":["leaked?"]}"#)
    );
    // A write that times out.
    let (status, body) = post(
        server.addr,
        &format!("/whoami/{}", s.token("a", "w")),
        "sleep",
    )
    .await;
    assert_eq!(status, 504, "{body}");
    // The next check on the same connection runs as its own role, on the authenticator's
    // session, with nothing left behind — for a web token, an anonymous one, and another web
    // token (different claims: not from the cache).
    let _web = connect(&whoami(&s.token("b", "r"))).await;
    let _anon = connect(&whoami(&token(json!({"sub":"c"})))).await;
    let _web2 = connect(&whoami(&s.token("d", "r"))).await;
    // And the write connection: `who` records current_user of the next write.
    let (status, body) = post(
        server.addr,
        &format!("/whoami/{}", s.token("e", "w")),
        "after",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let row = pg(&s.admin)
        .await
        .query_one(
            "SELECT who, author FROM api.messages WHERE body = 'after'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        (s.web.clone(), "e".to_string())
    );
    // Every connection ended clean (RESET ROLE undid the leaking write's role, the time-outs
    // were the server's statement_timeout), so none was discarded: one connection each served
    // every call.
    assert_eq!(
        server
            .metric("pgws_authz_connections_discarded_total")
            .await,
        0.0
    );
    let backends: i64 = pg(&s.admin)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND query NOT ILIKE 'LISTEN%'",
            &[&s.authenticator],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        backends <= 4,
        "checks, writes, NOTIFY pool: {backends} backends"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_function_that_raises_on_every_call_refuses_everyone_and_harms_nothing() {
    let s = postgrest_setup().await;
    let server = start_on(
        &s.uri,
        &[
            "--authz-function",
            "api.always_raises",
            "--default-mode",
            "r",
            "--admin-address",
            "127.0.0.1:0",
        ],
    )
    .await;
    for i in 0..20 {
        let (status, body) = refused(&server.url(&format!("/c{i}/{}", s.token("a", "r")))).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("42501") && body.contains("no, never"),
            "{body}"
        );
    }
    let (status, _) = server.admin_get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(server.metric("pgws_authz_cache_entries").await, 0.0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_revocation_closes_sockets_and_streams_on_every_node() {
    let s = postgrest_setup().await;
    s.admit("chat", "alice", false).await;
    s.admit("chat", "carol", false).await;
    let flags = [
        "--authz-function",
        "api.can_use_channel",
        "--default-mode",
        "r",
        "--admin-address",
        "127.0.0.1:0",
    ];
    let nodes = [
        start_on(&s.uri, &flags).await,
        start_on(&s.uri, &flags).await,
    ];
    let alice = s.token("alice", "r");
    let mut sockets = Vec::new();
    let mut streams = Vec::new();
    for node in &nodes {
        sockets.push(connect(&node.url(&format!("/chat/{alice}"))).await);
        let mut sse = crate::sse::open(node.addr, &format!("/chat/{alice}"), &[])
            .await
            .expect("stream opens");
        assert_eq!(sse.next().await.unwrap().comment.as_deref(), Some("ok"));
        streams.push(sse);
    }
    let mut carol = connect(&nodes[1].url(&format!("/chat/{}", s.token("carol", "r")))).await;
    // The policy changes, then the database says so.
    let db = pg(&s.admin).await;
    db.execute("DELETE FROM api.channel_members WHERE sub = 'alice'", &[])
        .await
        .unwrap();
    let sent = Instant::now();
    notify(
        &db,
        LISTEN,
        &json!({"pgws_control":"revoke","sub":"alice"}).to_string(),
    )
    .await;
    for ws in &mut sockets {
        let (frame, texts) = closed(ws).await;
        assert_eq!(close_code(&frame), (4403, "access revoked".to_string()));
        assert!(
            texts.is_empty(),
            "the control message is not delivered: {texts:?}"
        );
    }
    for sse in &mut streams {
        let ev = sse.next_event().await;
        assert_eq!(ev.event.as_deref(), Some("close"));
        let v: Value = serde_json::from_str(&ev.data.unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"event":"Close","code":4403,"reason":"access revoked"})
        );
        assert!(sse.next().await.is_none(), "the stream ends");
    }
    eprintln!(
        "revocation: 2 sockets and 2 streams on 2 nodes closed {:?} after the NOTIFY",
        sent.elapsed()
    );
    // Carol is still allowed: her socket stays open and receives what follows.
    notify(
        &db,
        LISTEN,
        &json!({"channel":"chat","payload":"still here"}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut carol).await["payload"], "still here");
    // Alice is refused from now on, on both nodes.
    for node in &nodes {
        let (status, _) = refused(&node.url(&format!("/chat/{alice}"))).await;
        assert_eq!(status, 403);
        assert_eq!(node.metric("pgws_authz_revoked_clients_total").await, 2.0);
        assert_eq!(node.metric("pgws_authz_revocations_total").await, 1.0);
    }
    for node in nodes {
        node.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_periodic_recheck_closes_without_a_message() {
    let s = postgrest_setup().await;
    s.admit("chat", "alice", false).await;
    let server = start_on(
        &s.uri,
        &[
            "--authz-function",
            "api.can_use_channel",
            "--authz-recheck-interval",
            "1",
            "--default-mode",
            "r",
        ],
    )
    .await;
    let mut ws = connect(&server.url(&format!("/chat/{}", s.token("alice", "r")))).await;
    pg(&s.admin)
        .await
        .execute("DELETE FROM api.channel_members", &[])
        .await
        .unwrap();
    let (frame, _) = closed(&mut ws).await;
    assert_eq!(close_code(&frame).0, 4403);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn writes_go_through_the_function_as_the_clients_role() {
    let s = postgrest_setup().await;
    s.admit("chat", "alice", true).await;
    s.admit("chat", "bob", true).await;
    s.admit("chat", "reader", false).await;
    let server = start_on(
        &s.uri,
        &[
            "--authz-function",
            "api.can_use_channel",
            "--authz-write-function",
            "api.post",
            "--authz-write-timeout",
            "3000",
            "--authz-write-pool-size",
            "2",
            "--admin-address",
            "127.0.0.1:0",
        ],
    )
    .await;
    let mut reader = connect(&server.url(&format!("/chat/{}", s.token("reader", "r")))).await;
    // Writers only (mode w): what they receive is their own answers.
    let mut alice = connect(&server.url(&format!("/chat/{}", s.token("alice", "w")))).await;
    // Accepted: the function stores it as the client's role and publishes its own version.
    send(&mut alice, "hello").await;
    let v = next_json(&mut reader).await;
    assert_eq!(v, json!({"channel":"chat","payload":"HELLO","by": s.web}));
    let db = pg(&s.admin).await;
    let row = db
        .query_one("SELECT who, author, channel FROM api.messages", &[])
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        (s.web.clone(), "alice".into(), "chat".into())
    );
    // Refused with an exception: an Error event with the SQLSTATE.
    send(&mut alice, "raise").await;
    let e = next_json(&mut alice).await;
    assert_eq!(
        e,
        json!({"event":"Error","code":"write_refused","message":"messages saying raise are refused",
               "channel":"chat","sqlstate":"P0001"})
    );
    // A slow call stalls neither other sockets nor its own socket's reading: bob's message is
    // stored and delivered while alice's call is still running.
    let mut bob = connect(&server.url(&format!("/chat/{}", s.token("bob", "w")))).await;
    send(&mut alice, "sleep").await;
    let sleeping = || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    tokio::time::timeout(WAIT, async {
        while sleeping().await == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("alice's call runs");
    send(&mut bob, "from bob").await;
    assert_eq!(next_json(&mut reader).await["payload"], "FROM BOB");
    assert_eq!(
        sleeping().await,
        1,
        "alice's call was still running when bob's was delivered"
    );
    // Timed out: the Error event says so, with the SQLSTATE of a cancelled statement.
    let e = next_json(&mut alice).await;
    assert_eq!(
        (e["code"].as_str(), e["sqlstate"].as_str()),
        (Some("write_timeout"), Some("57014"))
    );
    // HTTP publish: the function's result is the answer, an exception the error.
    let (status, body) = post(
        server.addr,
        &format!("/chat/{}", s.token("alice", "w")),
        "by http",
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"published":1,"results":["stored"]}"#)
    );
    assert_eq!(next_json(&mut reader).await["payload"], "BY HTTP");
    let (status, body) = post(
        server.addr,
        &format!("/chat/{}", s.token("alice", "w")),
        "raise",
    )
    .await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sqlstate"], "P0001");
    // A reader's message is refused by admission's mode (no write membership needed to read).
    send(&mut reader, "from a reader").await;
    assert_eq!(next_json(&mut reader).await["code"], "read_only");
    assert_eq!(
        server
            .metric("pgws_authz_writes_total{reason=\"ok\"}")
            .await,
        3.0
    );
    assert_eq!(
        server
            .metric("pgws_authz_writes_total{reason=\"refused\"}")
            .await,
        2.0
    );
    assert_eq!(
        server
            .metric("pgws_authz_writes_total{reason=\"timeout\"}")
            .await,
        1.0
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn control_messages_pass_through_when_authorization_is_off() {
    let s = start(&[]).await;
    let mut ws = connect(&s.url(&format!("/{LISTEN}/{}", token(json!({"mode":"r"}))))).await;
    let db = pg(&s.db).await;
    let text = json!({"pgws_control":"revoke","sub":"alice"}).to_string();
    notify(&db, LISTEN, &text).await;
    assert_eq!(
        next_text(&mut ws).await,
        text,
        "an ordinary message without authorization"
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_revocation_through_the_wal_closes_sockets_on_every_node() {
    let s = postgrest_setup().await;
    s.admit("chat", "alice", false).await;
    let db = pg(&s.admin).await;
    let dbname = s
        .admin
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .unwrap();
    // The WAL source's own needs: a replication slot and a publication.
    db.batch_execute(&format!(
        "ALTER ROLE {} REPLICATION; GRANT CREATE ON DATABASE {dbname} TO {};",
        s.authenticator, s.authenticator
    ))
    .await
    .unwrap();
    let flags = [
        "--source",
        "wal",
        "--authz-function",
        "api.can_use_channel",
        "--default-mode",
        "r",
    ];
    let nodes = [
        start_on(&s.uri, &flags).await,
        start_on(&s.uri, &flags).await,
    ];
    let alice = s.token("alice", "r");
    let mut sockets = Vec::new();
    for node in &nodes {
        sockets.push(connect(&node.url(&format!("/chat/{alice}"))).await);
    }
    db.execute("DELETE FROM api.channel_members", &[])
        .await
        .unwrap();
    db.execute(
        "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
        &[
            &LISTEN,
            &json!({"pgws_control":"revoke","channel":"chat"}).to_string(),
        ],
    )
    .await
    .unwrap();
    for ws in &mut sockets {
        let (frame, texts) = closed(ws).await;
        assert_eq!(close_code(&frame), (4403, "access revoked".to_string()));
        assert!(
            texts.is_empty(),
            "the control message is not delivered: {texts:?}"
        );
    }
    for node in nodes {
        node.stop().await.unwrap();
    }
}

#[tokio::test]
async fn protocol_v2_subscribes_and_publishes_ask_the_database() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = postgrest_setup().await;
    s.admit("chat", "alice", false).await;
    let server = start_on(
        &s.uri,
        &[
            "--authz-function",
            "api.can_use_channel",
            "--default-mode",
            "r",
        ],
    )
    .await;
    let mut req = server
        .url(&format!("/{}", s.token("alice", "rw")))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "pgws.v2".parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
        .expect("a v2 socket opens: its channels are asked for in band");
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let mut ask = async |request: serde_json::Value| {
        send(&mut ws, &request.to_string()).await;
        next_json(&mut ws).await
    };
    // Allowed by the policy (read), refused for another channel, and a publish refused because
    // alice's membership does not allow writing.
    let ok = ask(json!({"type":"subscribe","id":1,"channel":"chat"})).await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    let no = ask(json!({"type":"subscribe","id":2,"channel":"secret"})).await;
    assert_eq!(
        (no["type"].as_str(), no["code"].as_str()),
        (Some("error"), Some("not_authorized")),
        "{no}"
    );
    assert_eq!(no["id"], 2);
    let nack = ask(json!({"type":"publish","id":3,"channel":"chat","data":"hi"})).await;
    assert_eq!(
        (nack["type"].as_str(), nack["code"].as_str()),
        (Some("nack"), Some("not_authorized")),
        "{nack}"
    );
    // After the membership allows writing (a new answer, not cached: only allowed answers are),
    // the publish is acked.
    pg(&s.admin)
        .await
        .execute(
            "UPDATE api.channel_members SET can_write = true WHERE sub = 'alice'",
            &[],
        )
        .await
        .unwrap();
    let mut answer = ask(json!({"type":"publish","id":4,"channel":"chat","data":"hi"})).await;
    // The socket follows chat: its own message may arrive before the ack.
    for _ in 0..3 {
        if answer["id"] == 4 {
            break;
        }
        answer = next_json(&mut ws).await;
    }
    assert_eq!(answer["type"], "ack", "{answer}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn protocol_v2_publishes_go_through_the_write_function() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = postgrest_setup().await;
    let server = start_on(&s.uri, &["--authz-write-function", "api.post"]).await;
    let mut req = server
        .url(&format!("/{}", s.token("alice", "rw")))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "pgws.v2".parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
        .expect("a v2 socket opens");
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    send(
        &mut ws,
        &json!({"type":"subscribe","id":0,"channel":"chat"}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    // Refused by the function: a nack with its SQLSTATE, and nothing published.
    send(
        &mut ws,
        &json!({"type":"publish","id":1,"channel":"chat","data":"raise"}).to_string(),
    )
    .await;
    let nack = next_json(&mut ws).await;
    assert_eq!(
        (
            nack["type"].as_str(),
            nack["code"].as_str(),
            nack["sqlstate"].as_str()
        ),
        (Some("nack"), Some("write_refused"), Some("P0001")),
        "{nack}"
    );
    assert_eq!(nack["id"], 1);
    // Accepted: the function stores the row as the client's role and publishes its own
    // transformed message (upper case), which the socket receives besides the ack.
    send(
        &mut ws,
        &json!({"type":"publish","id":2,"channel":"chat","data":"hello"}).to_string(),
    )
    .await;
    let (mut acked, mut message) = (None, None);
    for _ in 0..2 {
        let v = next_json(&mut ws).await;
        match v["type"].as_str() {
            Some("ack") => acked = Some(v),
            Some("message") => message = Some(v),
            _ => panic!("unexpected frame {v}"),
        }
    }
    assert_eq!(acked.expect("an ack")["id"], 2);
    let message = message.expect("the function's message");
    let text: Value = serde_json::from_str(message["data"].as_str().unwrap()).unwrap();
    assert_eq!(text["payload"], "HELLO", "{message}");
    assert_eq!(text["by"], s.web.as_str());
    let who: String = pg(&s.admin)
        .await
        .query_one("SELECT who FROM api.messages WHERE body = 'hello'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, s.web);
    server.stop().await.unwrap();
}

/// `GET path` with a `pgws-check` header: status, `Retry-After`, body.
async fn check(addr: std::net::SocketAddr, path: &str, kind: &str) -> (u16, String) {
    let (status, _, body) = get(addr, "GET", path, &format!("pgws-check: {kind}\r\n")).await;
    (status, body)
}

/// A protocol v2 handshake that must be refused: status and body.
async fn refused_v2(url: &str) -> (u16, String) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "pgws.v2".parse().unwrap());
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("answer in time")
    {
        Ok(_) => panic!("v2 handshake to {url} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e:?}"),
    }
}

/// Every database channel check that ran (allowed, refused, error).
async fn checks_run(server: &TestServer) -> f64 {
    let mut n = 0.0;
    for reason in ["allowed", "refused", "error"] {
        n += server
            .metric(&format!("pgws_authz_checks_total{{reason=\"{reason}\"}}"))
            .await;
    }
    n
}

/// Waits (polling `/metrics`, within [`WAIT`]) until more than `before` checks ran.
async fn wait_checks(server: &TestServer, before: f64) {
    tokio::time::timeout(WAIT, async {
        while checks_run(server).await <= before {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a re-check ran in time");
}

#[tokio::test]
async fn pgws_check_refuses_what_the_handshake_refuses() {
    let s = postgrest_setup().await;
    s.admit("chat", "alice", false).await;
    let server = start_on(&s.uri, &["--authz-function", "api.can_use_channel"]).await;
    // Allowed by the policy: both answer yes.
    let reader = s.token("alice", "r");
    let (status, body) = check(server.addr, &format!("/chat/{reader}"), "1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["channels"],
        json!(["chat"])
    );
    drop(connect(&server.url(&format!("/chat/{reader}"))).await);
    // A channel the policy does not allow, and a mode it does not allow (an original-protocol
    // socket is checked in its token's mode): the handshake's 403 and reason, not a 200.
    for path in [
        format!("/secret/{reader}"),
        format!("/chat/{}", s.token("alice", "rw")),
    ] {
        let handshake = refused(&server.url(&path)).await;
        assert_eq!(handshake.0, 403, "{handshake:?}");
        assert_eq!(check(server.addr, &path, "1").await, handshake, "{path}");
    }
    // Protocol v2: the handshake checks the token's role (channels are asked for in band); a
    // token without one, with no anonymous role configured, is refused by both.
    let roleless = token(json!({"sub":"alice","mode":"r","channels":["chat"]}));
    let handshake = refused_v2(&server.url(&format!("/{roleless}"))).await;
    assert_eq!(handshake.0, 403, "{handshake:?}");
    assert_eq!(
        check(server.addr, &format!("/{roleless}"), "v2").await,
        handshake
    );
    let (status, body) = check(server.addr, &format!("/{reader}"), "v2").await;
    assert_eq!(status, 200, "{body}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_stream_is_checked_in_mode_r_at_admission_and_re_checks() {
    let s = postgrest_setup().await;
    s.admit("chat", "alice", false).await; // alice may read chat, not write it
    let server = start_on(
        &s.uri,
        &[
            "--authz-function",
            "api.can_use_channel",
            "--authz-recheck-interval",
            "1",
            "--admin-address",
            "127.0.0.1:0",
        ],
    )
    .await;
    let alice = s.token("alice", "rw");
    // An original-protocol websocket reads and writes: checked in its token's mode (documented).
    assert_eq!(refused(&server.url(&format!("/chat/{alice}"))).await.0, 403);
    // A stream only reads, whatever its token's mode.
    let mut sse = crate::sse::open(server.addr, &format!("/chat/{alice}"), &[])
        .await
        .expect("an rw token's stream is checked in mode r");
    assert_eq!(sse.next().await.unwrap().comment.as_deref(), Some("ok"));
    // A periodic re-check asks the same question: the stream stays open and receives.
    let before = checks_run(&server).await;
    wait_checks(&server, before).await;
    let db = pg(&s.admin).await;
    notify(
        &db,
        LISTEN,
        &json!({"channel":"chat","payload":"after the re-check"}).to_string(),
    )
    .await;
    let ev = sse.next_event().await;
    assert_eq!(ev.event, None, "not a close event: {ev:?}");
    let v: Value = serde_json::from_str(&ev.data.unwrap()).unwrap();
    assert_eq!(v["payload"], "after the re-check");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_v2_subscription_is_re_checked_in_mode_r() {
    let s = postgrest_setup().await;
    s.admit("chat", "alice", false).await; // alice may read chat, not write it
    let server = start_on(
        &s.uri,
        &[
            "--authz-function",
            "api.can_use_channel",
            "--authz-recheck-interval",
            "1",
            "--admin-address",
            "127.0.0.1:0",
        ],
    )
    .await;
    let (mut ws, _) = open_v2_url(&server.url(&format!("/{}", s.token("alice", "rw")))).await;
    send(
        &mut ws,
        &json!({"type":"subscribe","id":1,"channel":"chat"}).to_string(),
    )
    .await;
    let ok = next_json(&mut ws).await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    let db = pg(&s.admin).await;
    let still_open = async |ws: &mut Ws, n: u32| {
        send(ws, &json!({"type":"ping","id":n}).to_string()).await;
        let pong = next_json(ws).await;
        assert_eq!(
            (pong["type"].as_str(), pong["id"].as_u64()),
            (Some("pong"), Some(n as u64))
        );
        notify(
            &db,
            LISTEN,
            &json!({"channel":"chat","payload":n.to_string()}).to_string(),
        )
        .await;
        let m = next_json(ws).await;
        assert_eq!(m["type"], "message", "{m}");
    };
    // A periodic re-check, then a revocation naming alice: nothing changed, so nothing happens.
    let before = checks_run(&server).await;
    wait_checks(&server, before).await;
    still_open(&mut ws, 2).await;
    let before = checks_run(&server).await;
    notify(
        &db,
        LISTEN,
        &json!({"pgws_control":"revoke","sub":"alice"}).to_string(),
    )
    .await;
    wait_checks(&server, before).await;
    still_open(&mut ws, 3).await;
    assert_eq!(server.metric("pgws_authz_revoked_clients_total").await, 0.0);
    server.stop().await.unwrap();
}
