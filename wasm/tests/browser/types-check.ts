// Type-checked (never run) by run.mjs with `tsc --noEmit`: a typical use of
// the package must compile against the hand-written index.d.ts, and misuse
// must not.
import { Repo, DocHandle, KeyMismatchError, MycelError, UnavailableError, text, splice, type Patch } from "../../js/index.js";

interface Todo {
  title: string;
  done: boolean;
}
interface Doc {
  title: string;
  todos: Todo[];
  body?: string;
}

export async function typical(): Promise<void> {
  const repo = await Repo.open({ relay: "ws://127.0.0.1:8080/ws", name: "app", worker: false });
  const doc: DocHandle<Doc> = await repo.create<Doc>();
  const off = doc.on("saved-locally", (e) => console.log(e.doc, e.upto));
  doc.on("stored-remotely", (e) => console.log(e.copies));
  doc.subscribe(({ value, patches, local }) => {
    const first: Patch | undefined = patches[0];
    console.log(value.title, first?.path.join("/"), local);
  });
  doc.change((d) => {
    d.title = "groceries";
    d.todos.push({ title: "milk", done: false });
    (d as unknown as { body: unknown }).body = text("hello");
  });
  doc.change((d) => splice(d, "body", 0, 0, "oh, "));
  const v: Doc = doc.value();
  const link: string = doc.shareLink();
  const pin: string = doc.pinLink("https://pin.example/");
  const online: boolean = repo.status.online;
  const peers: number = doc.status.peers;
  try {
    const other = await repo.find<Doc>(link);
    await other.synced({ timeout: 5000, peers: 1 });
  } catch (e) {
    if (e instanceof KeyMismatchError || e instanceof UnavailableError) console.log(e.message);
    else if (e instanceof MycelError) console.log(e.name);
  }
  doc.setPresence({ name: "Ada", colour: "#2f6b4f" });
  doc.on("presence", (e) => console.log(e.peer, e.state === null ? "left" : e.state));
  const here: string[] = doc.presence().map((p) => p.peer);
  doc.setPresence(null);
  console.log(here);
  repo.on("status", (s) => console.log(s.online));
  repo.on("error", (e) => console.log(e.name, e.message));
  await repo.flush();
  off();
  await repo.close();
  console.log(v, pin, online, peers);

  // @ts-expect-error: not a document event
  doc.on("saved", () => {});
  // @ts-expect-error: presence is a JSON value, not a function
  doc.setPresence(() => 1);
  // @ts-expect-error: change takes a function
  doc.change({ title: "x" });
  // @ts-expect-error: the constructor is private; use Repo.open
  new Repo();
}
