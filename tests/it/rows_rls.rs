//! Per-row authorization of row subscriptions end to end (issue 22): a PostgREST-style table
//! with owner, team and public rows under RLS policies reading `request.jwt.claims`, subscribers
//! in several cohorts over real sockets, and an oracle in SQL: each subscriber receives exactly
//! the changes whose row version its role may see (0 leaks, 0 misses), and a row it holds that
//! leaves its view (deleted, or updated out of its sight) is removed by key, so its collection
//! equals what the role may see; a policy that raises withholds its cohort's changes with a
//! notice while the others flow.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::common::*;

/// Reads frames until `n` changes arrived or the fence row `fence` came; returns the changes.
async fn changes_until(ws: &mut Ws, fence: i64, notices: &mut usize) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = next_json(ws).await;
        match v["type"].as_str().unwrap() {
            "message" => {
                let c: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
                if c["new"]["id"].as_i64() == Some(fence) {
                    return out;
                }
                out.push(c);
            }
            "gap" => {
                assert_eq!(v["reason"], "authorization_failed", "{v}");
                *notices += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
}

#[tokio::test]
async fn rls_decides_every_change_for_each_cohort_exactly() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    let dbname = db_uri
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .unwrap()
        .to_string();
    let web = format!("{dbname}_rows_web");
    let anon = format!("{dbname}_rows_anon");
    db.batch_execute(&format!(
        "CREATE ROLE \"{web}\" NOLOGIN; CREATE ROLE \"{anon}\" NOLOGIN; \
         CREATE SCHEMA api; GRANT USAGE ON SCHEMA api TO PUBLIC; \
         CREATE FUNCTION api.allow() RETURNS boolean LANGUAGE sql AS 'SELECT true'; \
         CREATE TABLE docs (id int PRIMARY KEY, owner text, team text, public bool, body text); \
         ALTER TABLE docs REPLICA IDENTITY FULL; \
         ALTER TABLE docs ENABLE ROW LEVEL SECURITY; \
         GRANT SELECT ON docs TO \"{web}\", \"{anon}\"; \
         CREATE POLICY mine ON docs FOR SELECT TO \"{web}\" USING ( \
           owner = current_setting('request.jwt.claims', true)::json->>'sub' \
           OR team = current_setting('request.jwt.claims', true)::json->>'team' OR public); \
         CREATE POLICY everyone ON docs FOR SELECT TO \"{anon}\" USING (public); \
         CREATE PUBLICATION pgws FOR TABLE docs;"
    ))
    .await
    .unwrap();
    let s = start_on(
        &db_uri,
        &[
            "--source",
            "wal",
            "--authz-function",
            "api.allow",
            "--authz-anon-role",
            &anon,
        ],
    )
    .await;
    let channel = "table:public.docs";
    // Four cohorts: three users of the web role (two in team a), and the anonymous role.
    let users = [
        json!({"role": web, "sub": "alice", "team": "a"}),
        json!({"role": web, "sub": "bob", "team": "a"}),
        json!({"role": web, "sub": "carol", "team": "b"}),
        json!({"sub": "nobody"}),
    ];
    let mut sockets = Vec::new();
    for u in &users {
        let mut claims = u.clone();
        claims["mode"] = json!("r");
        claims["channels"] = json!([channel]);
        let (mut ws, _) = open_v2_url(&s.url(&format!("/{}", token(claims)))).await;
        send(
            &mut ws,
            &json!({"type":"subscribe","id":1,"channel":channel}).to_string(),
        )
        .await;
        let v = next_json(&mut ws).await;
        assert_eq!(v["type"], "subscribed", "{v}");
        sockets.push(ws);
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let owners = ["alice", "bob", "carol", "dave"];
    let teams = ["a", "b", "c"];
    let mut notices = 0;
    let mut received: Vec<Vec<Value>> = vec![Vec::new(); users.len()];
    // What was written, row by row (the versions each change carries).
    let mut table: BTreeMap<i64, Value> = BTreeMap::new();
    let mut issued: Vec<Value> = Vec::new();
    for batch in 0..20i64 {
        // Each row at most once per batch: every change's version is still the row's when it
        // is decided, so the oracle is exact (superseded versions are withheld by design).
        let mut ids: Vec<i32> = (1..=200).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let mut sql = String::from("BEGIN;");
        for id in ids.into_iter().take(50) {
            let (o, t, p) = (
                owners[(next() % 4) as usize],
                teams[(next() % 3) as usize],
                next() % 5 == 0,
            );
            let delete = next() % 3 == 0;
            if delete {
                if table.remove(&i64::from(id)).is_some() {
                    issued.push(json!({"deleted": id}));
                }
            } else {
                let row = json!({"id": id, "owner": o, "team": t, "public": p, "body": format!("v{batch}")});
                table.insert(i64::from(id), row.clone());
                issued.push(row);
            }
            sql.push_str(&match delete {
                true => format!("DELETE FROM docs WHERE id = {id};"),
                false => format!(
                    "INSERT INTO docs VALUES ({id}, '{o}', '{t}', {p}, 'v{batch}') \
                     ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, team = EXCLUDED.team, \
                     public = EXCLUDED.public, body = EXCLUDED.body;"
                ),
            });
        }
        // The fence: a public row every cohort sees, after the batch.
        let fence = -(batch + 1);
        sql.push_str(&format!(
            "COMMIT; INSERT INTO docs VALUES ({fence}, 'x', 'x', true, 'fence');"
        ));
        db.batch_execute(&sql).await.unwrap();
        for (i, ws) in sockets.iter_mut().enumerate() {
            received[i].extend(changes_until(ws, fence, &mut notices).await);
        }
    }
    assert_eq!(notices, 0, "no policy failed");
    // A policy that raises affects its cohort only: the anonymous subscriber is told (a gap
    // with the database's reason) and receives nothing of the batch; the others get it all.
    db.batch_execute(&format!(
        "CREATE FUNCTION api.boom() RETURNS boolean LANGUAGE plpgsql AS \
           $$BEGIN RAISE EXCEPTION 'policy exploded'; END$$; \
         GRANT EXECUTE ON FUNCTION api.boom() TO \"{anon}\"; \
         ALTER POLICY everyone ON docs USING (api.boom()); \
         INSERT INTO docs VALUES (1000, 'alice', 'a', true, 'after');"
    ))
    .await
    .unwrap();
    for (i, ws) in sockets.iter_mut().enumerate() {
        if i == 3 {
            let v = next_json(ws).await;
            assert_eq!(
                (v["type"].as_str(), v["reason"].as_str()),
                (Some("gap"), Some("authorization_failed")),
                "{v}"
            );
            assert!(
                v["message"].as_str().unwrap().contains("policy exploded"),
                "{v}"
            );
        } else {
            let v = next_json(ws).await;
            let c: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
            assert_eq!(c["new"]["id"], 1000, "{c}");
        }
    }
    db.batch_execute("ALTER POLICY everyone ON docs USING (public)")
        .await
        .unwrap();
    for (i, u) in users.iter().enumerate() {
        let sees = |row: &Value| -> bool {
            let public = row["public"].as_bool() == Some(true);
            match u.get("role") {
                None => public,
                Some(_) => public || row["owner"] == u["sub"] || row["team"] == u["team"],
            }
        };
        // The oracle of what the subscriber must receive, change by change: a version its
        // policy admits (the whole row), or, for a row it holds that leaves its view (deleted,
        // or updated out of its sight), the removal of that row by key, and nothing else.
        let mut held = std::collections::BTreeSet::new();
        let mut expected: Vec<(&str, Value)> = Vec::new();
        for op in &issued {
            if let Some(id) = op.get("deleted") {
                if held.remove(&id.as_i64().unwrap()) {
                    expected.push(("remove", json!({"id": id})));
                }
            } else if sees(op) {
                held.insert(op["id"].as_i64().unwrap());
                expected.push(("row", op.clone()));
            } else if held.remove(&op["id"].as_i64().unwrap()) {
                expected.push(("remove", json!({"id": op["id"]})));
            }
        }
        let mut got: Vec<(&str, Value)> = Vec::new();
        let mut collection: BTreeMap<i64, Value> = BTreeMap::new();
        for c in &received[i] {
            if c["new"].get("body").is_some() {
                // A version: never with its old row (not authorized), always one it may see.
                assert!(c["old"].is_null(), "an UPDATE's old row is not sent: {c}");
                assert!(
                    sees(&c["new"]),
                    "subscriber {i} received a row it may not see: {c}"
                );
                collection.insert(c["new"]["id"].as_i64().unwrap(), c["new"].clone());
                got.push(("row", c["new"].clone()));
            } else {
                // A removal: the key only.
                assert_eq!(
                    c["old"].as_object().map(|o| o.len()),
                    Some(1),
                    "key only: {c}"
                );
                assert!(
                    c["op"] == "DELETE" || (c["op"] == "UPDATE" && c["move"] == "out"),
                    "{c}"
                );
                collection.remove(&c["old"]["id"].as_i64().unwrap());
                got.push(("remove", c["old"].clone()));
            }
        }
        assert_eq!(
            got, expected,
            "subscriber {i}: exactly what its policy admits"
        );
        let removals = got.iter().filter(|(k, _)| *k == "remove").count();
        let role = u.get("role").and_then(Value::as_str).unwrap_or(&anon);
        db.batch_execute("BEGIN").await.unwrap();
        db.execute(
            "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
            &[&role, &u.to_string()],
        )
        .await
        .unwrap();
        let visible: Vec<(i64, Value)> = db
            .query(
                "SELECT id::int8, to_jsonb(d)::text FROM docs d WHERE id > 0 AND id < 1000",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), serde_json::from_str(r.get::<_, &str>(1)).unwrap()))
            .collect();
        db.batch_execute("COMMIT").await.unwrap();
        assert!(!visible.is_empty());
        let visible: BTreeMap<i64, Value> = visible.into_iter().collect();
        assert!(
            collection == visible,
            "subscriber {i}: its collection is not what its role may see"
        );
        println!(
            "subscriber {i}: {} changes ({removals} removals), {} rows visible",
            received[i].len(),
            visible.len()
        );
    }
}
