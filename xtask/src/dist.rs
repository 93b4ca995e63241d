//! `cargo xtask dist` (relay binary, npm package, web app) and `cargo xtask
//! run` (the same, served by the relay).

use std::fs;
use std::path::{Path, PathBuf};

use crate::Ctx;
use crate::ensure::{ensure_cargo_tool, ensure_rust_target, ensure_wasm_opt};
use crate::sh::{Error, Result, Steps, io_err, with_summary};

/// The wasm-bindgen CLI must match the `wasm-bindgen` crate exactly.
pub const WASM_BINDGEN_VERSION: &str = "0.2.130";
const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// binaryen's version as `wasm-opt --version` prints it (wasm/tools pins it).
const WASM_OPT_VERSION: &str = "version 132";
/// What Rust 1.95 enables for wasm32-unknown-unknown (wasm-opt must accept
/// every instruction the module uses).
const WASM_OPT_FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-reference-types",
    "--enable-multivalue",
];
/// -O2's passes without any inlining (inlining breaks up the repetition
/// gzip finds), repeated while they shrink the module, then merging
/// identical functions and dropping unused arguments and module items
/// (each helped after gzip: 467,343 B with -O1 in their place, 464,267 B
/// with -O2 and no inlining, 466,640 B with -O3; --converge saved 469 B).
const WASM_OPT_PASSES: &[&str] = &[
    "-O2",
    "--one-caller-inline-max-function-size=0",
    "--always-inline-max-function-size=0",
    "--flexible-inline-max-function-size=0",
    "--converge",
    "--duplicate-function-elimination",
    "--dae-optimizing",
    "--remove-unused-module-elements",
    "--duplicate-function-elimination",
];
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

pub fn dist(ctx: &Ctx) -> Result {
    with_summary("cargo xtask dist", |s| {
        s.step("release build of mycel-relay", || build_relay(ctx))?;
        s.step("npm package (wasm/pkg)", || npm_package(ctx))?;
        s.step("web app (www/dist)", || www(ctx))?;
        Ok(())
    })
}

pub fn run(ctx: &Ctx) -> Result {
    let mut s = Steps::new();
    s.step("release build of mycel-relay", || build_relay(ctx))?;
    // The app runs on the npm package: without wasm/pkg it would not start.
    s.step("npm package (wasm/pkg)", || npm_package(ctx))?;
    s.step("web app (www/dist)", || www(ctx))?;
    let relay = target_dir(ctx)
        .join("release")
        .join(format!("mycel-relay{}", std::env::consts::EXE_SUFFIX));
    if !relay.is_file() {
        return Err(Error(format!(
            "the relay binary is not at {} after the build",
            relay.display()
        )));
    }
    let listen = std::env::var("MYCEL_RELAY_LISTEN")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    println!("mycel relay: open http://{listen}/");
    // Only returns if the relay could not be started.
    Err(ctx
        .cmd(&relay)
        .args(["--listen", &listen, "--www", "www/dist"])
        .exec())
}

fn build_relay(ctx: &Ctx) -> Result {
    ctx.cargo()
        .args(["build", "--release", "-p", "mycel-relay", "--locked"])
        .run()
}

/// Where cargo puts build outputs: `target_directory` of `cargo metadata`
/// (which honours CARGO_TARGET_DIR and the config files), else
/// CARGO_TARGET_DIR, else `target/`.
pub fn target_dir(ctx: &Ctx) -> PathBuf {
    let from_metadata = ctx
        .cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .read_quietly()
        .and_then(|json| json_string_field(&json, "target_directory"));
    if let Some(dir) = from_metadata {
        return PathBuf::from(dir);
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => ctx.root.join(dir),
        _ => ctx.root.join("target"),
    }
}

/// The string value of the last `"key":` in a JSON text (the top-level
/// one for `cargo metadata`, whose target_directory follows the packages).
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let pattern = format!("\"{key}\":");
    let at = json.rfind(&pattern)? + pattern.len();
    let mut chars = json[at..].trim_start().strip_prefix('"')?.chars();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// True when a Cargo.toml lists `name` among its (normal or target-specific,
/// not dev-) dependencies.
fn depends_on(manifest: &str, name: &str) -> bool {
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_end_matches(']').trim();
            let deps_table = |t: &str| t == "dependencies" || t.ends_with(".dependencies");
            if let Some(table) = header.strip_suffix(&format!(".{name}")) {
                // [dependencies.NAME]
                if deps_table(table) {
                    return true;
                }
            }
            in_deps = deps_table(header);
            continue;
        }
        if in_deps {
            let key = line.split('=').next().unwrap_or("").trim();
            let key = key.split('.').next().unwrap_or("").trim().trim_matches('"');
            if key == name {
                return true;
            }
        }
    }
    false
}

/// The npm package: wasm-bindgen output of mycel-wasm in `wasm/pkg`, once
/// mycel-wasm uses wasm-bindgen.
pub fn npm_package(ctx: &Ctx) -> Result {
    let manifest = ctx.root.join("wasm/Cargo.toml");
    let text = fs::read_to_string(&manifest).map_err(|e| io_err("cannot read", &manifest, e))?;
    if !depends_on(&text, "wasm-bindgen") {
        println!(
            "--> the npm package is not built yet (wasm/Cargo.toml does not depend on wasm-bindgen): skipped"
        );
        return Ok(());
    }
    ensure_rust_target(ctx, WASM_TARGET)?;
    let bindgen = ensure_cargo_tool(
        ctx,
        "wasm-bindgen",
        "--version",
        WASM_BINDGEN_VERSION,
        // --locked fails for this crate (TOOLCHAIN.md).
        &[
            "wasm-bindgen-cli",
            "--version",
            WASM_BINDGEN_VERSION,
            "--no-default-features",
        ],
    )?;
    ctx.cargo()
        .args(["build", "-p", "mycel-wasm", "--target", WASM_TARGET])
        .args(["--profile", "wasm-release", "--locked"])
        .run()?;
    let wasm = target_dir(ctx)
        .join(WASM_TARGET)
        .join("wasm-release")
        .join("mycel_wasm.wasm");
    let pkg = ctx.root.join("wasm/pkg");
    remove_dir_if_present(&pkg)?;
    // Function names are 0.8 MB of the 2.3 MB module (≈180 KB gzipped):
    // a download cost every user pays for readable stack traces.
    ctx.cmd(&bindgen)
        .args(["--target", "web", "--out-dir", "wasm/pkg"])
        .args(["--remove-name-section", "--remove-producers-section"])
        .arg(&wasm)
        .run()?;
    // binaryen's wasm-opt over wasm-bindgen's output, with the passes that
    // shrink it after gzip (measured: 466,499 -> 458,577 B with -O1;
    // -O2 without inlining saved 3 KB more). -Oz/-Os make
    // it smaller raw but larger gzipped (reorder-functions and inlining
    // break up what gzip matches); see docs/design-decisions.md.
    let wasm_opt = ensure_wasm_opt(ctx, WASM_OPT_VERSION)?;
    let bg = pkg.join("mycel_wasm_bg.wasm");
    ctx.cmd(&wasm_opt)
        .args(WASM_OPT_FEATURES)
        .args(WASM_OPT_PASSES)
        .arg(&bg)
        .arg("-o")
        .arg(&bg)
        .run()?;
    // The package's own API (Repo, DocHandle, typed errors) and manifest,
    // written by hand in wasm/js/, go beside wasm-bindgen's output.
    for file in PACKAGE_FILES {
        let from = ctx.root.join("wasm/js").join(file);
        fs::copy(&from, pkg.join(file)).map_err(|e| io_err("cannot copy", &from, e))?;
    }
    let readme = ctx.root.join("wasm/js/README.md");
    if readme.is_file() {
        fs::copy(&readme, pkg.join("README.md")).map_err(|e| io_err("cannot copy", &readme, e))?;
    }
    report_wasm_size(ctx, &pkg.join("mycel_wasm_bg.wasm"))
}

/// The hand-written files of the npm package, in wasm/js/.
const PACKAGE_FILES: &[&str] = &["index.js", "worker.js", "index.d.ts", "package.json"];

/// Budget of the issue: the gzipped .wasm at most 450 KB.
const WASM_GZIP_BUDGET: u64 = 450 * 1024;

/// Prints the .wasm's size, raw and gzipped (what a browser downloads).
fn report_wasm_size(ctx: &Ctx, wasm: &Path) -> Result {
    let raw = fs::metadata(wasm)
        .map_err(|e| io_err("cannot read", wasm, e))?
        .len();
    let gzipped = ctx
        .cmd("sh")
        .arg("-c")
        .arg("gzip -9 -c \"$1\" | wc -c")
        .arg("sh")
        .arg(wasm)
        .read_quietly()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match gzipped {
        Some(gz) => {
            let verdict = if gz <= WASM_GZIP_BUDGET {
                "within"
            } else {
                "OVER"
            };
            println!(
                "--> wasm/pkg/mycel_wasm_bg.wasm: {raw} bytes, {gz} bytes gzipped ({:.0} KiB; {verdict} the 450 KiB budget)",
                gz as f64 / 1024.0
            );
        }
        None => {
            println!("--> wasm/pkg/mycel_wasm_bg.wasm: {raw} bytes (gzip not available to measure)")
        }
    }
    Ok(())
}

fn remove_dir_if_present(dir: &Path) -> Result {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("cannot remove", dir, e)),
        _ => Ok(()),
    }
}

/// The web app: `www/` (less `dist/` and `node_modules/`) copied into a
/// fresh `www/dist/`, with the npm package in `www/dist/pkg` when built.
pub fn www(ctx: &Ctx) -> Result {
    let src = ctx.root.join("www");
    if !src.is_dir() {
        return Err(Error(format!("{} does not exist", src.display())));
    }
    let dist = src.join("dist");
    remove_dir_if_present(&dist)?;
    let files = copy_dir(&src, &dist, &["dist", "node_modules"])?;
    println!("--> copied {} from www/ to www/dist/", files_count(files));
    let pkg = ctx.root.join("wasm/pkg");
    if pkg.is_dir() {
        let files = copy_dir(&pkg, &dist.join("pkg"), &[])?;
        println!(
            "--> copied {} from wasm/pkg/ to www/dist/pkg/",
            files_count(files)
        );
    } else {
        println!("--> no wasm/pkg (npm package not built): www/dist/pkg left out");
    }
    let build = build_id(&dist)?;
    stamp_build(&dist, &build)?;
    println!("--> www/dist is build {build} (service worker cache mycel-notes-{build})");
    Ok(())
}

/// The marks in www/ that [`stamp_build`] replaces with the build id: the
/// service worker's cache name (a new build is a new cache, installed whole
/// beside the old one) and the page's own record of what it runs.
const BUILD_MARKS: &[(&str, &str, &str)] = &[
    ("sw.js", "const BUILD = \"dev\";", "const BUILD = \"{}\";"),
    (
        "index.html",
        "<meta name=\"mycel-build\" content=\"dev\">",
        "<meta name=\"mycel-build\" content=\"{}\">",
    ),
];

/// A name for the content of the web app in `dir`: 64-bit FNV-1a over every
/// file's relative path and bytes, in path order (any change to any file
/// gives another build, so browsers install it; the same files give the
/// same build, so rebuilding changes nothing for them).
fn build_id(dir: &Path) -> Result<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> Result {
        let entries = fs::read_dir(dir).map_err(|e| io_err("cannot read", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("cannot read", dir, e))?;
            let name = format!("{rel}{}", entry.file_name().to_string_lossy());
            let path = entry.path();
            if path.is_dir() {
                walk(&path, &format!("{name}/"), out)?;
            } else {
                out.push((name, path));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, path) in &files {
        let bytes = fs::read(path).map_err(|e| io_err("cannot read", path, e))?;
        eat(name.as_bytes());
        eat(&[0]);
        eat(&(bytes.len() as u64).to_le_bytes());
        eat(&bytes);
    }
    Ok(format!("{h:016x}")[..12].to_owned())
}

/// Writes `build` into the marks of [`BUILD_MARKS`]; a mark missing from its
/// file is an error (the service worker would never see an update).
fn stamp_build(dir: &Path, build: &str) -> Result {
    for (file, mark, with) in BUILD_MARKS {
        let path = dir.join(file);
        let text = fs::read_to_string(&path).map_err(|e| io_err("cannot read", &path, e))?;
        if text.matches(mark).count() != 1 {
            return Err(Error(format!(
                "{} must hold `{mark}` exactly once (replaced by the build id)",
                path.display()
            )));
        }
        let text = text.replace(mark, &with.replace("{}", build));
        fs::write(&path, text).map_err(|e| io_err("cannot write", &path, e))?;
    }
    Ok(())
}

fn files_count(n: usize) -> String {
    if n == 1 {
        "1 file".to_owned()
    } else {
        format!("{n} files")
    }
}

/// Copies the tree `src` into `dst` (created), leaving out the top-level
/// entries named in `skip`; symbolic links are followed. Returns the number
/// of files copied.
fn copy_dir(src: &Path, dst: &Path, skip: &[&str]) -> Result<usize> {
    fs::create_dir_all(dst).map_err(|e| io_err("cannot create", dst, e))?;
    let entries = fs::read_dir(src).map_err(|e| io_err("cannot read", src, e))?;
    let mut files = 0;
    for entry in entries {
        let entry = entry.map_err(|e| io_err("cannot read", src, e))?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let (from, to) = (entry.path(), dst.join(&name));
        let meta = fs::metadata(&from).map_err(|e| io_err("cannot read", &from, e))?;
        if meta.is_dir() {
            files += copy_dir(&from, &to, &[])?;
        } else {
            fs::copy(&from, &to).map_err(|e| io_err("cannot copy", &from, e))?;
            files += 1;
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_directory_is_read_from_cargo_metadata() {
        let json = r#"{"packages":[{"name":"x","description":"a \"quoted\" text"}],"target_directory":"/work/t\\a\u00e9","version":1}"#;
        assert_eq!(
            json_string_field(json, "target_directory").as_deref(),
            Some("/work/t\\aé")
        );
        assert_eq!(json_string_field(json, "workspace_root"), None);
    }

    #[test]
    fn wasm_bindgen_dependency_is_recognised() {
        let no = "[package]\nname = \"mycel-wasm\"\n[dependencies]\nmycel-core = { workspace = true }\n\
                  wasm-bindgen-futures = \"0.4\"\n[dev-dependencies]\nwasm-bindgen = \"0.2\"\n";
        assert!(!depends_on(no, "wasm-bindgen"));
        for yes in [
            "[dependencies]\nwasm-bindgen = \"=0.2.130\"\n",
            "[dependencies]\nwasm-bindgen.workspace = true\n",
            "[target.'cfg(target_arch = \"wasm32\")'.dependencies]\nwasm-bindgen = \"0.2\"\n",
            "[dependencies.wasm-bindgen]\nversion = \"0.2\"\n",
        ] {
            assert!(depends_on(yes, "wasm-bindgen"), "{yes}");
        }
    }

    #[test]
    fn a_build_is_named_by_its_files_and_stamped_into_the_service_worker() {
        let tmp = std::env::temp_dir().join(format!("xtask-build-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(tmp.join("pkg")).unwrap();
        fs::write(tmp.join("sw.js"), "const BUILD = \"dev\";\nconst X = 1;\n").unwrap();
        fs::write(
            tmp.join("index.html"),
            "<head><meta name=\"mycel-build\" content=\"dev\"></head>",
        )
        .unwrap();
        fs::write(tmp.join("pkg/a.wasm"), [0u8, 1, 2]).unwrap();
        let a = build_id(&tmp).unwrap();
        assert_eq!(a.len(), 12);
        assert_eq!(build_id(&tmp).unwrap(), a, "the same files, the same build");
        fs::write(tmp.join("pkg/a.wasm"), [0u8, 1, 3]).unwrap();
        let b = build_id(&tmp).unwrap();
        assert_ne!(a, b, "a changed file is a new build");
        stamp_build(&tmp, &b).unwrap();
        assert_eq!(
            fs::read_to_string(tmp.join("sw.js")).unwrap(),
            format!("const BUILD = \"{b}\";\nconst X = 1;\n")
        );
        assert!(
            fs::read_to_string(tmp.join("index.html"))
                .unwrap()
                .contains(&format!("content=\"{b}\""))
        );
        // Stamped once: the mark is gone, so a second stamp is refused.
        assert!(stamp_build(&tmp, &b).is_err());
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn www_copy_leaves_out_dist_and_node_modules() {
        let tmp = std::env::temp_dir().join(format!("xtask-copy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        for d in ["src/js", "src/dist", "src/node_modules/x"] {
            fs::create_dir_all(tmp.join(d)).unwrap();
        }
        for f in [
            "src/index.html",
            "src/js/app.js",
            "src/dist/old",
            "src/node_modules/x/y",
        ] {
            fs::write(tmp.join(f), f).unwrap();
        }
        let n = copy_dir(
            &tmp.join("src"),
            &tmp.join("src/dist"),
            &["dist", "node_modules"],
        );
        assert_eq!(n.unwrap(), 2);
        assert!(tmp.join("src/dist/js/app.js").is_file());
        assert!(!tmp.join("src/dist/node_modules").exists());
        assert!(!tmp.join("src/dist/dist").exists());
        fs::remove_dir_all(&tmp).unwrap();
    }
}
