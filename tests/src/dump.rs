//! A canonical text form of an Automerge document's current value, to
//! compare replicas by content (not only by heads).

use std::fmt::Write as _;

use automerge::{Automerge, ObjId, ObjType, ROOT, ReadDoc, Value};

/// Renders the whole document as deterministic JSON-like text.
pub fn dump(doc: &Automerge) -> String {
    let mut out = String::new();
    dump_obj(doc, &ROOT, ObjType::Map, &mut out);
    out
}

fn dump_obj(doc: &Automerge, obj: &ObjId, kind: ObjType, out: &mut String) {
    match kind {
        ObjType::Map | ObjType::Table => {
            out.push('{');
            for (i, key) in doc.keys(obj).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{key:?}:");
                if let Ok(Some((v, id))) = doc.get(obj, key.as_str()) {
                    dump_value(doc, v, &id, out);
                }
            }
            out.push('}');
        }
        ObjType::List => {
            out.push('[');
            for i in 0..doc.length(obj) {
                if i > 0 {
                    out.push(',');
                }
                if let Ok(Some((v, id))) = doc.get(obj, i) {
                    dump_value(doc, v, &id, out);
                }
            }
            out.push(']');
        }
        ObjType::Text => {
            let _ = write!(out, "{:?}", doc.text(obj).unwrap_or_default());
        }
    }
}

fn dump_value(doc: &Automerge, v: Value<'_>, id: &ObjId, out: &mut String) {
    match v {
        Value::Object(kind) => dump_obj(doc, id, kind, out),
        Value::Scalar(s) => {
            let _ = write!(out, "{s}");
        }
    }
}
