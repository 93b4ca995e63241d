//! The IndexedDB store and the JS value conversions, in a real browser:
//! wasm-bindgen-test in headless Chromium (`cargo xtask test` runs it with
//! wasm-bindgen-test-runner and chromedriver; see xtask/src/test.rs).
#![cfg(target_arch = "wasm32")]

use mycel_core::crypto::{DocKey, DocKeys, Identity, Rng};
use mycel_core::id::{DocId, RoomId};
use mycel_core::wire::EnvelopeKind;
use mycel_wasm::store::Store;
use mycel_wasm::value::{self, Input};
use wasm_bindgen::JsValue;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn store_round_trip() {
    let name = format!("mycel-store-test-{}", js_sys::Math::random());
    let store = Store::open(&name).await.expect("open");
    let mut rng = Rng::from_seed([1; 32]);
    let author = Identity::generate(&mut rng);
    let (doc, key) = (DocId([2; 16]), DocKey::from_bytes([3; 32]));
    let mut keys = DocKeys::new(doc, key.clone());
    let envs: Vec<_> = (1..=3)
        .map(|seq| {
            keys.seal(&author, EnvelopeKind::Change, seq, b"change", &mut rng)
                .expect("seal")
        })
        .collect();

    let w = store.write().expect("begin");
    w.doc(&doc, &key).expect("doc");
    w.identity(0, &[9; 32]).expect("identity");
    for env in &envs {
        w.envelope(&keys.room(), env).expect("envelope");
    }
    w.done().await.expect("commit");

    assert_eq!(store.identity(0).await.unwrap(), Some([9; 32]));
    assert_eq!(store.identity(1).await.unwrap(), None);
    let docs = store.docs().await.unwrap();
    assert_eq!(docs.len(), 1);
    assert!(docs[0].0 == doc && docs[0].1 == key);
    let stored = store.records(&keys.room()).await.unwrap().0;
    let expected: Vec<Vec<u8>> = envs.iter().map(|e| e.bytes().to_vec()).collect();
    assert_eq!(
        stored, expected,
        "a room's envelopes come back in seq order"
    );
    assert!(
        store.records(&RoomId([0; 32])).await.unwrap().0.is_empty(),
        "another room holds nothing"
    );
    // Writing the same (room, author, seq) again replaces, never duplicates.
    let w = store.write().expect("begin");
    w.envelope(&keys.room(), &envs[0]).expect("envelope");
    w.done().await.expect("commit");
    assert_eq!(store.records(&keys.room()).await.unwrap().0.len(), 3);
    store.close();
}

#[wasm_bindgen_test]
fn js_values_convert_and_bad_ones_are_errors() {
    let v = js_sys::JSON::parse(r#"{"a":[1,2.5,"x",null,true],"b":{"c":"d"}}"#).unwrap();
    let Ok(Input::Map(entries)) = value::input(&v) else {
        panic!("an object is a map");
    };
    assert_eq!(entries.len(), 2);
    assert!(value::input(&JsValue::UNDEFINED).is_err());
    assert!(value::input(&js_sys::Function::new_no_args("")).is_err());
    // A value that refers to itself is refused, not followed forever.
    let cyclic = js_sys::Object::new();
    js_sys::Reflect::set(&cyclic, &"me".into(), &cyclic).unwrap();
    assert!(value::input(&cyclic).is_err());
    assert!(value::ops(&JsValue::from("not a list")).is_err());
    let bad_index = js_sys::JSON::parse(r#"[["splice", ["a"], -1, 0, []]]"#).unwrap();
    assert!(value::ops(&bad_index).is_err());
}
