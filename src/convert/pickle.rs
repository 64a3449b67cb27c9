//! A restricted unpickler for the pickles `torch.save` writes.
//!
//! It interprets the protocol 2-5 opcodes Python's pickler emits for state dicts and builds a
//! value graph; it never imports or calls anything. `GLOBAL`/`STACK_GLOBAL` resolve only an
//! allow-list of torch and `collections` names to markers, and `REDUCE`/`NEWOBJ` on those
//! markers are interpreted as data (an empty dict, a tensor description), so a checkpoint that
//! refers to any other Python object is refused instead of run.
//!
//! Lists, tuples, dicts and tensors live in an arena and values refer to them by index. That
//! gives pickle's reference semantics for free (a dict memoized while empty and filled later is
//! seen filled through every reference), keeps `Value` flat so neither cloning nor dropping
//! recurses however deeply a hostile stream nests, and turns self-referencing containers into
//! cycles the consumer bounds by depth rather than into infinite data.

use safetensors::Dtype;
use std::collections::HashMap;
use std::rc::Rc;

/// One pickled value. Containers are indices into [`Pickle`]'s arena, so cloning is cheap.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as pickle stores it: little-endian two's complement.
    BigInt(Rc<[u8]>),
    Str(Rc<str>),
    /// Floats and bytes are never names or tensor data in a checkpoint: only their presence
    /// (a skipped leaf) matters.
    Float,
    Bytes,
    /// A tuple, list, set or frozenset (the difference never matters for a checkpoint).
    Seq(usize),
    Dict(usize),
    Tensor(usize),
    /// The result of `BINPERSID`: the arena index of torch's persistent-id tuple.
    Storage(usize),
    Global(Global),
}

impl Value {
    /// The kind of value, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Seq(_) => "tuple or list",
            Value::Dict(_) => "dict",
            Value::Tensor(_) => "tensor",
            Value::Storage(_) => "storage",
            Value::Global(_) => "global",
        }
    }
}

/// The globals a checkpoint may name: everything else is refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    /// A storage class (`torch.FloatStorage`, `torch.UntypedStorage`, ...) and its element type.
    StorageType(Dtype),
    /// A dtype object (`torch.float32`) saved as a plain value.
    Dtype(Dtype),
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    let dtype = |name: &str| {
        Some(match name {
            "float32" | "FloatStorage" => Dtype::F32,
            "float16" | "HalfStorage" => Dtype::F16,
            "bfloat16" | "BFloat16Storage" => Dtype::BF16,
            "float64" | "DoubleStorage" => Dtype::F64,
            "int64" | "LongStorage" => Dtype::I64,
            "int32" | "IntStorage" => Dtype::I32,
            "int16" | "ShortStorage" => Dtype::I16,
            "int8" | "CharStorage" => Dtype::I8,
            "uint8" | "ByteStorage" => Dtype::U8,
            "bool" | "BoolStorage" => Dtype::BOOL,
            _ => return None,
        })
    };
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => Some(Global::RebuildParameterWithState),
        // An untyped storage's persistent id counts bytes, so its element type is u8.
        ("torch" | "torch.storage", "UntypedStorage") => Some(Global::StorageType(Dtype::U8)),
        ("torch", n) if n.ends_with("Storage") => dtype(n).map(Global::StorageType),
        ("torch", n) => dtype(n).map(Global::Dtype),
        _ => None,
    }
}

const MAX_DIMS: usize = 64;

/// What [`Value::Tensor`] refers to: `_rebuild_tensor_v2`'s arguments, not yet materialised.
#[derive(Debug)]
pub struct TensorArgs {
    /// Arena index of the storage's persistent-id tuple.
    pub storage: usize,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Debug)]
enum Object {
    Seq(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Tensor(TensorArgs),
}

/// One unpickled object graph.
#[derive(Debug)]
pub struct Pickle {
    objects: Vec<Object>,
    pub root: Value,
    /// Arena indices of every persistent id, in stream order.
    pub persistent_ids: Vec<usize>,
}

impl Pickle {
    /// The items of a tuple or list (empty for an index that is not one).
    pub fn seq(&self, id: usize) -> &[Value] {
        match self.objects.get(id) {
            Some(Object::Seq(items)) => items,
            _ => &[],
        }
    }
    /// A dict's entries in insertion order (empty for an index that is not one).
    pub fn dict(&self, id: usize) -> &[(Value, Value)] {
        match self.objects.get(id) {
            Some(Object::Dict(entries)) => entries,
            _ => &[],
        }
    }
    pub fn tensor(&self, id: usize) -> Option<&TensorArgs> {
        match self.objects.get(id) {
            Some(Object::Tensor(args)) => Some(args),
            _ => None,
        }
    }
}

/// Unpickles one pickle starting at `*pos` in `data` and leaves `*pos` just after its `STOP`,
/// so consecutive pickles (torch's legacy format) can be read in turn. Errors are messages
/// naming the byte offset in `data`.
pub fn load(data: &[u8], pos: &mut usize) -> Result<Pickle, String> {
    let mut m = Machine {
        data,
        pos: *pos,
        op_at: *pos,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
        persistent_ids: Vec::new(),
    };
    let root = m.run()?;
    *pos = m.pos;
    Ok(Pickle { objects: m.objects, root, persistent_ids: m.persistent_ids })
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for error messages.
    op_at: usize,
    stack: Vec<Value>,
    /// Stack lengths at each `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
    persistent_ids: Vec<usize>,
}

impl<'a> Machine<'a> {
    fn run(&mut self) -> Result<Value, String> {
        loop {
            self.op_at = self.pos;
            let op = self.take(1)?[0];
            match op {
                // PROTO: every version reads the same here. FRAME: only a read-ahead hint.
                0x80 => _ = self.take(1)?,
                0x95 => _ = self.take(8)?,
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'0' => _ = self.pop()?,
                b'1' => _ = self.pop_mark()?,
                b'2' => {
                    let top = self.top()?.clone();
                    self.stack.push(top)
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v.into()))
                }
                b'K' => {
                    let v = self.take(1)?[0];
                    self.stack.push(Value::Int(v.into()))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v.into()))
                }
                0x8a => {
                    let n = self.take(1)?[0] as usize;
                    self.long(n)?
                }
                0x8b => {
                    let n = self.len4()?;
                    self.long(n)?
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Float)
                }
                0x8c => {
                    let n = self.take(1)?[0] as usize;
                    self.unicode(n)?
                }
                b'X' => {
                    let n = self.len4()?;
                    self.unicode(n)?
                }
                0x8d => {
                    let n = self.len8()?;
                    self.unicode(n)?
                }
                b'C' => {
                    let n = self.take(1)?[0] as usize;
                    self.bytes(n)?
                }
                b'B' => {
                    let n = self.len4()?;
                    self.bytes(n)?
                }
                0x8e | 0x96 => {
                    // BINBYTES8, BYTEARRAY8
                    let n = self.len8()?;
                    self.bytes(n)?
                }
                b'U' | b'T' => {
                    // SHORT_BINSTRING, BINSTRING: Python 2 `str`, which Python 3 loads as text
                    // when it can; only keys and names matter here, so do the same.
                    let n = if op == b'U' { self.take(1)?[0] as usize } else { self.len4()? };
                    let raw = self.take(n)?;
                    let v = match std::str::from_utf8(raw) {
                        Ok(s) => Value::Str(s.into()),
                        Err(_) => Value::Bytes,
                    };
                    self.stack.push(v)
                }
                b')' => self.new_seq(Vec::new()),
                0x85..=0x87 => {
                    // TUPLE1..TUPLE3
                    let n = usize::from(op - 0x84);
                    let at = self.stack.len().checked_sub(n).filter(|&at| at >= self.floor());
                    let items = self.stack.split_off(at.ok_or_else(|| self.underflow())?);
                    self.new_seq(items)
                }
                b't' | b'l' | 0x91 => {
                    // TUPLE, LIST, FROZENSET
                    let items = self.pop_mark()?;
                    self.new_seq(items)
                }
                b']' | 0x8f => self.new_seq(Vec::new()), // EMPTY_LIST, EMPTY_SET
                b'a' => {
                    let item = self.pop()?;
                    self.seq_mut()?.push(item)
                }
                b'e' | 0x90 => {
                    // APPENDS, ADDITEMS
                    let items = self.pop_mark()?;
                    self.seq_mut()?.extend(items)
                }
                b'}' => self.new_dict(Vec::new()),
                b'd' => {
                    let items = self.pop_mark()?;
                    let entries = self.pairs(items)?;
                    self.new_dict(entries)
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.dict_mut()?.push((key, value))
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let entries = self.pairs(items)?;
                    self.dict_mut()?.extend(entries)
                }
                b'h' => {
                    let i = self.take(1)?[0];
                    self.memo_get(i.into())?
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.memo_get(i)?
                }
                b'q' => {
                    let i = self.take(1)?[0];
                    self.memo_put(i.into())?
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.error("memo overflow"))?;
                    self.memo_put(i)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => self.global(&module, &name)?,
                        _ => return Err(self.error("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v)
                }
                0x81 | 0x92 => {
                    // NEWOBJ cls args, NEWOBJ_EX cls args kwargs: `cls.__new__(cls, ...)`, which
                    // for the one class allowed here, OrderedDict, is an empty dict.
                    if op == 0x92 {
                        self.pop()?;
                    }
                    self.pop()?;
                    match self.pop()? {
                        Value::Global(Global::OrderedDict) => self.new_dict(Vec::new()),
                        other => return Err(self.error(format!("cannot instantiate a {}", other.kind()))),
                    }
                }
                b'b' => {
                    // BUILD sets an object's state. The only object that gets one in a state
                    // dict is the OrderedDict (its `_metadata` of module versions), which
                    // tensor reading does not need.
                    self.pop()?;
                    match self.top()? {
                        Value::Dict(_) => {}
                        other => return Err(self.error(format!("cannot set the state of a {}", other.kind()))),
                    }
                }
                b'Q' => {
                    // BINPERSID: torch's reference to a storage record, resolved by the caller.
                    let id = match self.pop()? {
                        Value::Seq(id) => id,
                        other => return Err(self.error(format!("persistent id is a {}, not a tuple", other.kind()))),
                    };
                    self.persistent_ids.push(id);
                    self.stack.push(Value::Storage(id))
                }
                _ => return Err(self.error(format!("unknown pickle opcode 0x{op:02x}"))),
            }
        }
    }

    fn error(&self, reason: impl std::fmt::Display) -> String {
        format!("{reason} at byte {}", self.op_at)
    }

    fn underflow(&self) -> String {
        self.error("pickle stack underflow")
    }

    /// The next `n` bytes, or an error if the stream ends first.
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.data.len());
        match end {
            Some(end) => {
                let bytes = &self.data[self.pos..end];
                self.pos = end;
                Ok(bytes)
            }
            None => Err(format!(
                "pickle stream cut off: the opcode at byte {} runs past the end, byte {} (truncated file?)",
                self.op_at,
                self.data.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len4(&mut self) -> Result<usize, String> {
        let n = i32::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| self.error(format!("negative length {n}")))
    }

    fn len8(&mut self) -> Result<usize, String> {
        let n = u64::from_le_bytes(self.array()?);
        // A length past the end of the stream is caught by `take`.
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// A newline-terminated line (the text arguments of `GLOBAL`).
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.error("GLOBAL name cut off by the end of the stream (truncated file?)"))?;
        let line = self.take(n + 1)?;
        std::str::from_utf8(&line[..n]).map_err(|_| self.error("GLOBAL name is not UTF-8"))
    }

    fn long(&mut self, n: usize) -> Result<(), String> {
        let raw = self.take(n)?;
        let v = if n <= 8 {
            // Sign-extend the little-endian two's complement bytes.
            let fill = if raw.last().is_some_and(|&b| b & 0x80 != 0) { 0xff } else { 0 };
            let mut bytes = [fill; 8];
            bytes[..n].copy_from_slice(raw);
            Value::Int(i64::from_le_bytes(bytes))
        } else {
            Value::BigInt(raw.into())
        };
        self.stack.push(v);
        Ok(())
    }

    fn unicode(&mut self, n: usize) -> Result<(), String> {
        let raw = self.take(n)?;
        let s = std::str::from_utf8(raw).map_err(|_| self.error("string is not UTF-8"))?;
        let v = Value::Str(s.into());
        self.stack.push(v);
        Ok(())
    }

    fn bytes(&mut self, n: usize) -> Result<(), String> {
        self.take(n)?;
        self.stack.push(Value::Bytes);
        Ok(())
    }

    /// Where the current frame of the stack starts: items below the innermost MARK belong
    /// to an outer frame and only the opcode that closes the MARK may take them.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.stack.len() <= self.floor() {
            return Err(self.underflow());
        }
        self.stack.pop().ok_or_else(|| self.underflow())
    }

    fn top(&self) -> Result<&Value, String> {
        if self.stack.len() <= self.floor() {
            return Err(self.underflow());
        }
        self.stack.last().ok_or_else(|| self.underflow())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or_else(|| self.error("no MARK to pop to"))?;
        if mark > self.stack.len() {
            return Err(self.underflow());
        }
        Ok(self.stack.split_off(mark))
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
        if !items.len().is_multiple_of(2) {
            return Err(self.error("odd number of items for a dict"));
        }
        let mut items = items.into_iter();
        Ok(std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect())
    }

    fn new_seq(&mut self, items: Vec<Value>) {
        self.objects.push(Object::Seq(items));
        self.stack.push(Value::Seq(self.objects.len() - 1));
    }

    fn new_dict(&mut self, entries: Vec<(Value, Value)>) {
        self.objects.push(Object::Dict(entries));
        self.stack.push(Value::Dict(self.objects.len() - 1));
    }

    /// The list on top of the stack, to append to.
    fn seq_mut(&mut self) -> Result<&mut Vec<Value>, String> {
        let id = match self.top()? {
            Value::Seq(id) => *id,
            _ => usize::MAX,
        };
        match self.objects.get_mut(id) {
            Some(Object::Seq(items)) => Ok(items),
            _ => Err(format!("APPEND to something that is not a list at byte {}", self.op_at)),
        }
    }

    /// The dict on top of the stack, to set items in.
    fn dict_mut(&mut self) -> Result<&mut Vec<(Value, Value)>, String> {
        let id = match self.top()? {
            Value::Dict(id) => *id,
            _ => usize::MAX,
        };
        match self.objects.get_mut(id) {
            Some(Object::Dict(entries)) => Ok(entries),
            _ => Err(format!("SETITEM on something that is not a dict at byte {}", self.op_at)),
        }
    }

    fn memo_get(&mut self, i: u32) -> Result<(), String> {
        let v = self.memo.get(&i).cloned().ok_or_else(|| self.error(format!("memo key {i} was never stored")))?;
        self.stack.push(v);
        Ok(())
    }

    fn memo_put(&mut self, i: u32) -> Result<(), String> {
        let v = self.top()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), String> {
        let g = resolve_global(module, name).ok_or_else(|| {
            let reason =
                format!("unsupported pickle global `{module}.{name}`: refusing to execute unknown pickle content");
            format!(
                "{}. If the file holds a whole model or other Python objects, save just the \
                 tensors: torch.save(model.state_dict(), path)",
                self.error(reason)
            )
        })?;
        self.stack.push(Value::Global(g));
        Ok(())
    }

    /// `callable(*args)` for the allowed callables, interpreted rather than called.
    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value, String> {
        let Value::Seq(args_id) = args else {
            return Err(self.error("REDUCE arguments are not a tuple"));
        };
        let args = match self.objects.get(args_id) {
            Some(Object::Seq(items)) => items.as_slice(),
            _ => &[],
        };
        match callable {
            Value::Global(Global::OrderedDict) if args.is_empty() => {
                self.objects.push(Object::Dict(Vec::new()));
                Ok(Value::Dict(self.objects.len() - 1))
            }
            // _rebuild_tensor(storage, offset, size, stride) and _rebuild_tensor_v2(storage,
            // offset, size, stride, requires_grad, backward_hooks[, metadata]): the trailing
            // arguments only matter for autograd.
            Value::Global(Global::RebuildTensor | Global::RebuildTensorV2) if args.len() >= 4 => {
                let storage = match args[0] {
                    Value::Storage(id) => id,
                    ref other => return Err(self.error(format!("tensor storage is a {}", other.kind()))),
                };
                let offset = self.index(&args[1])?;
                let size = self.indices(&args[2])?;
                let stride = self.indices(&args[3])?;
                if size.len() != stride.len() {
                    return Err(self.error(format!("tensor has {} sizes but {} strides", size.len(), stride.len())));
                }
                self.objects.push(Object::Tensor(TensorArgs { storage, offset, size, stride }));
                Ok(Value::Tensor(self.objects.len() - 1))
            }
            // _rebuild_parameter(data, requires_grad, backward_hooks[, state]): a Parameter
            // is its tensor for reading purposes.
            Value::Global(Global::RebuildParameter | Global::RebuildParameterWithState) => match args.first() {
                Some(data @ Value::Tensor(_)) => Ok(data.clone()),
                _ => Err(self.error("parameter without a tensor")),
            },
            other => Err(self.error(format!("cannot call {other:?} with {} arguments", args.len()))),
        }
    }

    fn index(&self, v: &Value) -> Result<usize, String> {
        match *v {
            Value::Int(i) => {
                usize::try_from(i).map_err(|_| self.error(format!("negative tensor size, stride or offset {i}")))
            }
            ref other => Err(self.error(format!("tensor size, stride or offset is a {}", other.kind()))),
        }
    }

    fn indices(&self, v: &Value) -> Result<Vec<usize>, String> {
        match *v {
            Value::Seq(id) => match self.objects.get(id) {
                // Torch allows 64 dimensions at most; the cap also keeps a memoized huge tuple
                // reused as every tensor's shape from costing quadratic time.
                Some(Object::Seq(items)) if items.len() > MAX_DIMS => {
                    Err(self.error(format!("tensor has {} dimensions", items.len())))
                }
                Some(Object::Seq(items)) => items.iter().map(|i| self.index(i)).collect(),
                _ => Ok(Vec::new()),
            },
            ref other => Err(self.error(format!("tensor shape is a {}, not a tuple", other.kind()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_all(data: &[u8]) -> Result<Pickle, String> {
        let mut pos = 0;
        let p = load(data, &mut pos)?;
        assert_eq!(pos, data.len());
        Ok(p)
    }

    /// `{'w': _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', 6), 1, (2, 2), (1, 2),
    /// False, OrderedDict())}` as protocol 2 writes it, with the tensor's global memoized and
    /// fetched back as torch's pickles do.
    fn tensor_dict() -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'X', 1, 0, 0, 0, b'w'];
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x01((X\x07\x00\x00\x00storage");
        p.extend(b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
        p.extend(b"K\x01K\x02K\x02\x86K\x01K\x02\x86\x89ccollections\nOrderedDict\n)RtRs.");
        p
    }

    #[test]
    fn reads_a_tensor_dict() {
        let p = load_all(&tensor_dict()).unwrap();
        let Value::Dict(d) = p.root else { panic!("root is {:?}", p.root) };
        let [(Value::Str(k), Value::Tensor(t))] = p.dict(d) else { panic!("{:?}", p.dict(d)) };
        assert_eq!(&**k, "w");
        let t = p.tensor(*t).unwrap();
        assert_eq!((t.offset, t.size.as_slice(), t.stride.as_slice()), (1, &[2, 2][..], &[1, 2][..]));
        assert_eq!(p.persistent_ids, vec![t.storage]);
        let pid = p.seq(t.storage);
        assert!(matches!(pid[1], Value::Global(Global::StorageType(Dtype::F32))));
        assert!(matches!(pid[4], Value::Int(6)));
    }

    #[test]
    fn protocol_4_opcodes() {
        // PROTO 4, FRAME, EMPTY_DICT, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL, LONG1,
        // BINFLOAT, BINUNICODE8, a memoized list filled after memoization and then fetched.
        let mut p = vec![0x80, 4, 0x95, 0, 0, 0, 0, 0, 0, 0, 0, b'}', 0x94, b'('];
        p.extend([0x8c, 1, b'a', 0x8c, 5]);
        p.extend(b"torch");
        p.extend([0x8c, 7]);
        p.extend(b"float16");
        p.extend([0x93, 0x8c, 1, b'b', 0x8a, 2, 0xff, 0x7f, 0x8c, 1, b'c', b'G']);
        p.extend(1.5f64.to_be_bytes());
        p.extend([0x8d, 1, 0, 0, 0, 0, 0, 0, 0, b'd', b']', 0x94, b'J']);
        p.extend((-7i32).to_le_bytes());
        p.extend([b'a', 0x8c, 1, b'e', b'h', 1, b'u', b'.']);
        let p = load_all(&p).unwrap();
        let Value::Dict(d) = p.root else { panic!() };
        let e = p.dict(d);
        assert!(matches!(e[0].1, Value::Global(Global::Dtype(Dtype::F16))));
        assert!(matches!(e[1].1, Value::Int(32767)));
        assert!(matches!(e[2].1, Value::Float));
        // Both references see the list filled after it was memoized.
        for (_, v) in &e[3..] {
            let Value::Seq(l) = *v else { panic!() };
            assert!(matches!(p.seq(l), [Value::Int(-7)]));
        }
    }

    #[test]
    fn consecutive_pickles_and_big_ints() {
        // torch's legacy magic number is wider than 64 bits.
        let magic = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
        let mut data = vec![0x80, 2, 0x8a, 10];
        data.extend(magic);
        data.extend([b'.', 0x80, 2, b'M', 0xe9, 0x03, b'.']);
        let mut pos = 0;
        let first = load(&data, &mut pos).unwrap();
        assert!(matches!(first.root, Value::BigInt(ref b) if **b == magic));
        assert!(matches!(load(&data, &mut pos).unwrap().root, Value::Int(1001)));
        assert_eq!(pos, data.len());
    }

    #[test]
    fn refuses_unknown_globals() {
        let err = load_all(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR.").unwrap_err();
        assert!(err.contains("unsupported pickle global `os.system`"), "{err}");
        let err = load_all(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.").unwrap_err();
        assert!(err.contains("`builtins.eval`"), "{err}");
        // Allowed names may only be used the way torch uses them.
        let err = load_all(b"\x80\x02ctorch\nFloatStorage\n)R.").unwrap_err();
        assert!(err.contains("cannot call"), "{err}");
    }

    #[test]
    fn truncated_streams_are_errors() {
        let full = tensor_dict();
        for n in 0..full.len() {
            let err = load_all(&full[..n]).unwrap_err();
            assert!(err.contains("truncated") || err.contains("underflow"), "{n}: {err}");
        }
    }

    #[test]
    fn unknown_opcode_names_byte_and_offset() {
        let err = load_all(b"\x80\x02}\xff.").unwrap_err();
        assert_eq!(err, "unknown pickle opcode 0xff at byte 3");
    }

    #[test]
    fn malformed_streams_are_errors() {
        for bad in [
            &b"."[..],             // STOP on an empty stack
            b"(0.",                // POP past a MARK
            b"N(a.",               // APPEND to None
            b"}(K\x01u.",          // odd SETITEMS
            b"h\x05.",             // memo miss
            b"K\x01Q.",            // persistent id that is not a tuple
            b"X\xff\xff\xff\xff.", // negative length
            b"cos\nsys",           // unterminated GLOBAL
            b"1.",                 // POP_MARK without MARK
        ] {
            assert!(load_all(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_byte_value_is_handled_without_panicking() {
        // Corrupt each byte of a valid stream in turn: any result is fine, a panic is not.
        let good = tensor_dict();
        for i in 0..good.len() {
            for b in [0u8, 0x7f, 0x80, 0xff, b'(', b'.', b'Q', b'R'] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = load(&bad, &mut 0);
            }
        }
    }
}
