//! Automerge documents as JavaScript values, the edit operations the JS
//! wrapper records from `doc.change(fn)`, and patches for subscribers.
//!
//! An operation is an array: `["put", path, value]`, `["del", path]`,
//! `["splice", path, index, deleteCount, values]` (lists) or
//! `["text", path, index, deleteCount, text]` (text objects). A path is an
//! array of map keys (strings) and list indices (numbers) from the root.

use automerge::transaction::{Transactable, Transaction};
use automerge::{
    AutomergeError, ObjId, ObjType, Patch, PatchAction, Prop, ROOT, ReadDoc, ScalarValue, Value,
};
use js_sys::{Array, Object, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};

/// The key of the marker object `{ [TEXT_MARK]: "…" }` that asks for a
/// collaborative text object instead of a plain string.
pub const TEXT_MARK: &str = "__mycelText";

/// A value to write, converted from JS before the transaction starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Scalar(ScalarValue),
    Text(String),
    List(Vec<Input>),
    Map(Vec<(String, Input)>),
}

/// One recorded edit.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Put(Vec<Prop>, Input),
    Delete(Vec<Prop>),
    Splice {
        path: Vec<Prop>,
        index: usize,
        delete: usize,
        insert: Vec<Input>,
    },
    Text {
        path: Vec<Prop>,
        index: usize,
        delete: usize,
        text: String,
    },
}

/// Nesting deeper than this is refused (a cyclic or hostile value).
const MAX_DEPTH: usize = 64;

fn index(v: &JsValue, what: &str) -> Result<usize, String> {
    match v.as_f64() {
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0 => Ok(n as usize),
        _ => Err(format!("{what} must be a whole number ≥ 0")),
    }
}

fn path(v: &JsValue) -> Result<Vec<Prop>, String> {
    let arr = v
        .dyn_ref::<Array>()
        .ok_or("a path must be an array of keys and indices")?;
    arr.iter()
        .map(|p| match p.as_string() {
            Some(s) => Ok(Prop::Map(s)),
            None => index(&p, "a list index").map(Prop::Seq),
        })
        .collect()
}

/// Converts a JS value to something Automerge can store.
pub fn input(v: &JsValue) -> Result<Input, String> {
    input_at(v, 0)
}

fn input_at(v: &JsValue, depth: usize) -> Result<Input, String> {
    if depth > MAX_DEPTH {
        return Err("the value is nested too deeply (or refers to itself)".into());
    }
    if v.is_null() {
        return Ok(Input::Scalar(ScalarValue::Null));
    }
    if v.is_undefined() {
        return Err("undefined cannot be stored (use delete to remove a key)".into());
    }
    if let Some(b) = v.as_bool() {
        return Ok(Input::Scalar(ScalarValue::Boolean(b)));
    }
    if let Some(n) = v.as_f64() {
        let int = n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_991.0;
        return Ok(Input::Scalar(if int {
            ScalarValue::Int(n as i64)
        } else {
            ScalarValue::F64(n)
        }));
    }
    if let Some(s) = v.as_string() {
        return Ok(Input::Scalar(ScalarValue::Str(s.into())));
    }
    if let Some(bytes) = v.dyn_ref::<Uint8Array>() {
        return Ok(Input::Scalar(ScalarValue::Bytes(bytes.to_vec())));
    }
    if let Some(date) = v.dyn_ref::<js_sys::Date>() {
        return Ok(Input::Scalar(
            ScalarValue::Timestamp(date.get_time() as i64),
        ));
    }
    if let Some(arr) = v.dyn_ref::<Array>() {
        return arr
            .iter()
            .map(|x| input_at(&x, depth + 1))
            .collect::<Result<_, _>>()
            .map(Input::List);
    }
    if v.is_object() {
        if let Ok(t) = Reflect::get(v, &TEXT_MARK.into())
            && let Some(t) = t.as_string()
        {
            return Ok(Input::Text(t));
        }
        let obj: &Object = v.unchecked_ref();
        return Object::entries(obj)
            .iter()
            .map(|pair| {
                let pair: Array = pair.unchecked_into();
                let key = pair.get(0).as_string().unwrap_or_default();
                input_at(&pair.get(1), depth + 1).map(|v| (key, v))
            })
            .collect::<Result<_, _>>()
            .map(Input::Map);
    }
    Err(format!(
        "a {} cannot be stored in a document",
        v.js_typeof().as_string().unwrap_or_default()
    ))
}

/// Parses the operations array the wrapper recorded.
pub fn ops(v: &JsValue) -> Result<Vec<Op>, String> {
    let arr = v
        .dyn_ref::<Array>()
        .ok_or("the operations must be an array")?;
    arr.iter()
        .map(|op| {
            let op: Array = op.dyn_into().map_err(|_| "an operation must be an array")?;
            let kind = op.get(0).as_string().unwrap_or_default();
            let p = path(&op.get(1))?;
            match kind.as_str() {
                "put" => Ok(Op::Put(p, input(&op.get(2))?)),
                "del" => Ok(Op::Delete(p)),
                "splice" => {
                    let values = op.get(4);
                    let insert = match values.dyn_ref::<Array>() {
                        Some(a) => a.iter().map(|x| input(&x)).collect::<Result<_, _>>()?,
                        None => Vec::new(),
                    };
                    Ok(Op::Splice {
                        path: p,
                        index: index(&op.get(2), "a splice index")?,
                        delete: index(&op.get(3), "a delete count")?,
                        insert,
                    })
                }
                "text" => Ok(Op::Text {
                    path: p,
                    index: index(&op.get(2), "a text index")?,
                    delete: index(&op.get(3), "a delete count")?,
                    text: op.get(4).as_string().unwrap_or_default(),
                }),
                other => Err(format!("unknown operation {other:?}")),
            }
        })
        .collect()
}

fn prop_text(p: &Prop) -> String {
    match p {
        Prop::Map(k) => format!("{k:?}"),
        Prop::Seq(i) => i.to_string(),
    }
}

/// Resolves a path to an object; the error names where it broke.
fn object(tx: &Transaction<'_>, path: &[Prop]) -> Result<(ObjId, ObjType), String> {
    let mut obj = ROOT;
    let mut kind = ObjType::Map;
    for (i, p) in path.iter().enumerate() {
        let here = || {
            path[..=i]
                .iter()
                .map(prop_text)
                .collect::<Vec<_>>()
                .join(".")
        };
        match tx.get(&obj, p.clone()) {
            Ok(Some((Value::Object(k), id))) => {
                obj = id;
                kind = k;
            }
            Ok(_) => return Err(format!("{} is not an object or list", here())),
            Err(e) => return Err(format!("{}: {e}", here())),
        }
    }
    Ok((obj, kind))
}

fn put_new(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    prop: Prop,
    insert: bool,
    v: &Input,
) -> Result<(), AutomergeError> {
    let kind = match v {
        Input::Scalar(s) => {
            return match (prop, insert) {
                (Prop::Seq(i), true) => tx.insert(obj, i, s.clone()),
                (p, _) => tx.put(obj, p, s.clone()),
            };
        }
        Input::Text(_) => ObjType::Text,
        Input::List(_) => ObjType::List,
        Input::Map(_) => ObjType::Map,
    };
    let child = match (prop, insert) {
        (Prop::Seq(i), true) => tx.insert_object(obj, i, kind)?,
        (p, _) => tx.put_object(obj, p, kind)?,
    };
    match v {
        Input::Text(t) => tx.splice_text(&child, 0, 0, t),
        Input::List(items) => {
            for (i, item) in items.iter().enumerate() {
                put_new(tx, &child, Prop::Seq(i), true, item)?;
            }
            Ok(())
        }
        Input::Map(entries) => {
            for (k, item) in entries {
                put_new(tx, &child, Prop::Map(k.clone()), false, item)?;
            }
            Ok(())
        }
        Input::Scalar(_) => Ok(()),
    }
}

/// Applies the operations in one transaction. An operation that cannot
/// apply stops the whole change (the transaction is rolled back).
pub fn apply(tx: &mut Transaction<'_>, ops: &[Op]) -> Result<(), String> {
    for op in ops {
        match op {
            Op::Put(p, _) | Op::Delete(p) if p.is_empty() => {
                return Err("the document root cannot be replaced: set its keys instead".into());
            }
            Op::Put(p, v) => {
                let (last, parent) = p.split_last().ok_or("empty path")?;
                let (obj, kind) = object(tx, parent)?;
                let (prop, insert) = match (last, kind) {
                    (Prop::Seq(i), ObjType::List) => {
                        let len = tx.length(&obj);
                        if *i > len {
                            return Err(format!("index {i} is past the end of a list of {len}"));
                        }
                        (Prop::Seq(*i), *i == len)
                    }
                    (Prop::Map(k), ObjType::Map | ObjType::Table) => (Prop::Map(k.clone()), false),
                    _ => return Err(format!("{} does not fit its parent", prop_text(last))),
                };
                put_new(tx, &obj, prop, insert, v).map_err(|e| e.to_string())?;
            }
            Op::Delete(p) => {
                let (last, parent) = p.split_last().ok_or("empty path")?;
                let (obj, _) = object(tx, parent)?;
                tx.delete(&obj, last.clone()).map_err(|e| e.to_string())?;
            }
            Op::Splice {
                path,
                index,
                delete,
                insert,
            } => {
                let (obj, kind) = object(tx, path)?;
                if kind != ObjType::List {
                    return Err("splice needs a list".into());
                }
                let len = tx.length(&obj);
                if index.saturating_add(*delete) > len {
                    return Err(format!(
                        "splice {index}+{delete} is past the end of a list of {len}"
                    ));
                }
                for _ in 0..*delete {
                    tx.delete(&obj, *index).map_err(|e| e.to_string())?;
                }
                for (i, v) in insert.iter().enumerate() {
                    put_new(tx, &obj, Prop::Seq(index + i), true, v).map_err(|e| e.to_string())?;
                }
            }
            Op::Text {
                path,
                index,
                delete,
                text,
            } => {
                let (obj, kind) = object(tx, path)?;
                if kind != ObjType::Text {
                    return Err("text edits need a text object (made with text(\"…\"))".into());
                }
                let len = tx.length(&obj);
                if index.saturating_add(*delete) > len {
                    return Err(format!(
                        "text edit {index}+{delete} is past the end ({len} characters)"
                    ));
                }
                tx.splice_text(&obj, *index, *delete as isize, text)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

fn set(obj: &Object, key: &str, v: &JsValue) {
    // Setting a property on a plain object we just made cannot fail.
    let _ = Reflect::set(obj, &key.into(), v);
}

fn scalar(s: &ScalarValue) -> JsValue {
    match s {
        ScalarValue::Null => JsValue::NULL,
        ScalarValue::Boolean(b) => (*b).into(),
        ScalarValue::Int(i) => (*i as f64).into(),
        ScalarValue::Uint(u) => (*u as f64).into(),
        ScalarValue::F64(f) => (*f).into(),
        ScalarValue::Counter(c) => (i64::from(c) as f64).into(),
        ScalarValue::Timestamp(t) => js_sys::Date::new(&(*t as f64).into()).into(),
        ScalarValue::Str(s) => JsValue::from_str(s),
        ScalarValue::Bytes(b) => Uint8Array::from(b.as_slice()).into(),
        // A kind of value from a later Automerge: its raw bytes (not its
        // Display, whose float formatting would cost the .wasm).
        ScalarValue::Unknown { bytes, .. } => Uint8Array::from(bytes.as_slice()).into(),
    }
}

/// The object `obj` (of kind `kind`) as a plain JS value: maps become
/// objects, lists arrays, text strings.
pub fn to_js(doc: &impl ReadDoc, obj: &ObjId, kind: ObjType) -> JsValue {
    match kind {
        ObjType::Map | ObjType::Table => {
            let out = Object::new();
            for k in doc.keys(obj) {
                if let Ok(Some((v, id))) = doc.get(obj, k.as_str()) {
                    set(&out, &k, &value(doc, &v, &id));
                }
            }
            out.into()
        }
        ObjType::List => {
            let out = Array::new();
            for i in 0..doc.length(obj) {
                if let Ok(Some((v, id))) = doc.get(obj, i) {
                    out.push(&value(doc, &v, &id));
                }
            }
            out.into()
        }
        ObjType::Text => JsValue::from_str(&doc.text(obj).unwrap_or_default()),
    }
}

fn value(doc: &impl ReadDoc, v: &Value<'_>, id: &ObjId) -> JsValue {
    match v {
        Value::Object(kind) => to_js(doc, id, *kind),
        Value::Scalar(s) => scalar(s),
    }
}

/// A value a patch puts or inserts: an object arrives empty (`{}`, `[]`,
/// or `""` for text) and the patches after it fill it, so that applying
/// the patches in order gives the document's new state.
fn patch_value(v: &Value<'_>) -> JsValue {
    match v {
        Value::Object(ObjType::Map | ObjType::Table) => Object::new().into(),
        Value::Object(ObjType::List) => Array::new().into(),
        Value::Object(ObjType::Text) => JsValue::from_str(""),
        Value::Scalar(s) => scalar(s),
    }
}

/// Patches as plain objects: `{ action, path, value?, values?, length? }`
/// where `path` ends with the key or index the action is at.
pub fn patches(patches: Vec<Patch>) -> Array {
    let out = Array::new();
    for p in patches {
        let path = Array::new();
        for (_, prop) in &p.path {
            path.push(&prop_js(prop));
        }
        let o = Object::new();
        let (action, at) = match &p.action {
            PatchAction::PutMap {
                key, value: (v, _), ..
            } => {
                set(&o, "value", &patch_value(v));
                ("put", JsValue::from_str(key))
            }
            PatchAction::PutSeq {
                index,
                value: (v, _),
                ..
            } => {
                set(&o, "value", &patch_value(v));
                ("put", (*index as f64).into())
            }
            PatchAction::Insert { index, values } => {
                let vs = Array::new();
                for (v, _, _) in values.iter() {
                    vs.push(&patch_value(v));
                }
                set(&o, "values", &vs);
                ("insert", (*index as f64).into())
            }
            PatchAction::SpliceText { index, value, .. } => {
                set(&o, "value", &JsValue::from_str(&value.make_string()));
                ("splice", (*index as f64).into())
            }
            PatchAction::Increment { prop, value } => {
                set(&o, "value", &(*value as f64).into());
                ("inc", prop_js(prop))
            }
            PatchAction::DeleteMap { key } => ("del", JsValue::from_str(key)),
            PatchAction::DeleteSeq { index, length } => {
                set(&o, "length", &(*length as f64).into());
                ("del", (*index as f64).into())
            }
            PatchAction::Conflict { prop } => ("conflict", prop_js(prop)),
            PatchAction::Mark { .. } => ("mark", JsValue::UNDEFINED),
        };
        if !at.is_undefined() {
            path.push(&at);
        }
        set(&o, "action", &action.into());
        set(&o, "path", &path);
        out.push(&o);
    }
    out
}

fn prop_js(p: &Prop) -> JsValue {
    match p {
        Prop::Map(k) => JsValue::from_str(k),
        Prop::Seq(i) => (*i as f64).into(),
    }
}
