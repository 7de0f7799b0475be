//! A pickle reader for `torch.save`'s `data.pkl` (protocols 2-5): it builds plain values,
//! turns `torch._utils._rebuild_tensor_v2` calls into tensor references and the persistent
//! ids `('storage', torch.XStorage, key, location, numel)` into storage references, and
//! keeps every other class call as an opaque [`Value::Object`]. Nothing is executed, so a
//! checkpoint cannot run code, whatever classes it names.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::TorchDtype;

/// A storage of the archive (`data/<key>`): `numel` elements of `dtype`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: TorchDtype,
    pub numel: usize,
}

/// A tensor: a strided view of a storage (offset and strides in elements).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl TensorRef {
    /// The number of elements, if it fits.
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }
}

#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(String),
    /// A class or function applied to arguments that this reader does not interpret.
    Object { class: String, args: Rc<Vec<Value>> },
    Storage(StorageRef),
    Tensor(TensorRef),
    Mark,
}

impl Value {
    fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.to_vec()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }
    fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self.b.get(self.at..self.at + n).ok_or_else(|| format!("pickle truncated at byte {}", self.at))?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<usize, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as usize)
    }
    fn u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()) as usize)
    }
    fn u64(&mut self) -> Result<usize, String> {
        usize::try_from(u64::from_le_bytes(self.take(8)?.try_into().unwrap())).map_err(|e| e.to_string())
    }
    fn line(&mut self) -> Result<String, String> {
        let end = self.b[self.at..].iter().position(|&c| c == b'\n').ok_or("pickle truncated in a text line")?;
        let s = String::from_utf8_lossy(&self.b[self.at..self.at + end]).into_owned();
        self.at += end + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: usize) -> Result<String, String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| format!("bad UTF-8 in the pickle: {e}"))
    }
}

/// Little-endian two's-complement integer of `bytes` (LONG1 / LONG4).
fn long(bytes: &[u8]) -> Result<i64, String> {
    if bytes.len() > 8 {
        return Err(format!("integer of {} bytes does not fit 64 bits", bytes.len()));
    }
    let mut v: i64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        v |= (b as i64) << (8 * i);
    }
    if let Some(&last) = bytes.last() {
        if bytes.len() < 8 && last & 0x80 != 0 {
            v -= 1i64 << (8 * bytes.len());
        }
    }
    Ok(v)
}

fn as_usizes(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    v.items()
        .ok_or_else(|| format!("tensor {what} is not a tuple"))?
        .iter()
        .map(|x| x.int().and_then(|i| usize::try_from(i).ok()).ok_or_else(|| format!("tensor {what} holds a non-integer")))
        .collect()
}

/// The value a class or function named `class` returns for `args`, where this reader knows it.
fn call(class: &str, args: Rc<Vec<Value>>) -> Result<Value, String> {
    match class {
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let storage = match args.first() {
                Some(Value::Storage(s)) => s.clone(),
                other => return Err(format!("{class}: expected a storage, got {other:?}")),
            };
            let offset = args.get(1).and_then(Value::int).and_then(|i| usize::try_from(i).ok()).ok_or_else(|| format!("{class}: bad storage offset"))?;
            let shape = as_usizes(args.get(2).ok_or("tensor without a shape")?, "shape")?;
            let stride = as_usizes(args.get(3).ok_or("tensor without strides")?, "strides")?;
            if shape.len() != stride.len() {
                return Err(format!("tensor shape {shape:?} and strides {stride:?} differ in rank"));
            }
            Ok(Value::Tensor(TensorRef { storage, offset, shape, stride }))
        }
        // a Parameter is its data
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => Ok(args.first().cloned().unwrap_or(Value::None)),
        "collections.OrderedDict" | "builtins.dict" => {
            let pairs = match args.first().and_then(Value::items) {
                Some(items) => items.iter().filter_map(|p| p.items().filter(|kv| kv.len() == 2).map(|kv| (kv[0].clone(), kv[1].clone()))).collect(),
                None => Vec::new(),
            };
            Ok(Value::Dict(Rc::new(RefCell::new(pairs))))
        }
        _ => Ok(Value::Object { class: class.to_string(), args }),
    }
}

fn persistent(pid: Value) -> Result<Value, String> {
    let items = pid.items().ok_or("persistent id is not a tuple")?;
    match items.as_slice() {
        [Value::Str(kind), Value::Global(class), Value::Str(key), _location, numel] if kind == "storage" => {
            let name = class.rsplit('.').next().unwrap_or(class);
            let dtype = TorchDtype::from_storage(name).ok_or_else(|| format!("storage type {class} is not supported"))?;
            let numel = numel.int().and_then(|n| usize::try_from(n).ok()).ok_or("storage size is not an integer")?;
            Ok(Value::Storage(StorageRef { key: key.clone(), dtype, numel }))
        }
        _ => Err(format!("unsupported persistent id {items:?}")),
    }
}

/// Runs the pickle program `bytes` and returns the object it builds.
pub fn load(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader { b: bytes, at: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<usize, Value> = HashMap::new();
    let pop = |stack: &mut Vec<Value>| stack.pop().ok_or_else(|| "pickle stack underflow".to_string());
    // the values above the topmost mark, removing the mark
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>, String> {
        let m = stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or("pickle mark missing")?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    fn top(stack: &mut [Value]) -> Result<&mut Value, String> {
        stack.last_mut().ok_or_else(|| "pickle stack underflow".to_string())
    }
    fn set_items(target: &Value, items: Vec<Value>) -> Result<(), String> {
        match target {
            Value::Dict(d) => {
                let mut d = d.borrow_mut();
                for kv in items.chunks(2) {
                    if let [k, v] = kv {
                        d.push((k.clone(), v.clone()));
                    }
                }
                Ok(())
            }
            _ => Err("SETITEMS on a non-dict".into()),
        }
    }
    fn append(target: &Value, items: Vec<Value>) -> Result<(), String> {
        match target {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            // sets (ADDITEMS) and other containers: contents are not needed
            Value::Object { .. } => Ok(()),
            _ => Err("APPEND on a non-list".into()),
        }
    }
    loop {
        let at = r.at;
        let op = r.u8()?;
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 5 {
                    return Err(format!("pickle protocol {proto} is newer than this reader (2-5)"));
                }
            }
            0x95 => {
                r.u64()?; // FRAME: a length hint
            }
            b'.' => return pop(&mut stack),
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack.push(Value::Int(i32::from_le_bytes(r.take(4)?.try_into().unwrap()) as i64)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                stack.push(Value::Int(long(r.take(n)?)?));
            }
            0x8b => {
                let n = r.u32()?;
                stack.push(Value::Int(long(r.take(n)?)?));
            }
            b'I' => {
                let l = r.line()?;
                stack.push(match l.as_str() {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    s => Value::Int(s.parse().map_err(|_| format!("bad INT {s:?}"))?),
                });
            }
            b'L' => {
                let l = r.line()?;
                stack.push(Value::Int(l.trim_end_matches('L').parse().map_err(|_| format!("bad LONG {l:?}"))?));
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(r.take(8)?.try_into().unwrap()))),
            b'F' => {
                let l = r.line()?;
                stack.push(Value::Float(l.parse().map_err(|_| format!("bad FLOAT {l:?}"))?));
            }
            b'X' => {
                let n = r.u32()?;
                stack.push(Value::Str(r.utf8(n)?));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.utf8(n)?));
            }
            0x8d => {
                let n = r.u64()?;
                stack.push(Value::Str(r.utf8(n)?));
            }
            b'V' => stack.push(Value::Str(r.line()?)),
            b'T' => {
                let n = r.u32()?;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'U' | b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'B' => {
                let n = r.u32()?;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            0x8e => {
                let n = r.u64()?;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            0x96 => {
                let n = r.u64()?;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'S' => {
                let l = r.line()?;
                stack.push(Value::Str(l.trim_matches(|c| c == '\'' || c == '"').to_string()));
            }
            b')' => stack.push(Value::Tuple(Rc::new(Vec::new()))),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err("pickle stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(Rc::new(items)));
            }
            b']' => stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'}' => stack.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
            b'd' => {
                let items = pop_mark(&mut stack)?;
                let d = Value::Dict(Rc::new(RefCell::new(Vec::new())));
                set_items(&d, items)?;
                stack.push(d);
            }
            0x8f => stack.push(Value::Object { class: "builtins.set".into(), args: Rc::new(Vec::new()) }),
            0x91 => {
                pop_mark(&mut stack)?;
                stack.push(Value::Object { class: "builtins.frozenset".into(), args: Rc::new(Vec::new()) });
            }
            b'a' => {
                let v = pop(&mut stack)?;
                append(top(&mut stack)?, vec![v])?;
            }
            b'e' | 0x90 => {
                let items = pop_mark(&mut stack)?;
                append(top(&mut stack)?, items)?;
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                set_items(top(&mut stack)?, vec![k, v])?;
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                set_items(top(&mut stack)?, items)?;
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(format!("{module}.{name}")));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(format!("{m}.{n}"))),
                    _ => return Err("STACK_GLOBAL of non-strings".into()),
                }
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                let class = match f {
                    Value::Global(g) => g,
                    Value::Object { class, .. } => class,
                    other => return Err(format!("REDUCE on {other:?}")),
                };
                stack.push(call(&class, Rc::new(args.items().unwrap_or_default()))?);
            }
            0x81 => {
                let args = pop(&mut stack)?;
                let cls = pop(&mut stack)?;
                let class = if let Value::Global(g) = cls { g } else { "object".into() };
                stack.push(call(&class, Rc::new(args.items().unwrap_or_default()))?);
            }
            0x92 => {
                let _kwargs = pop(&mut stack)?;
                let args = pop(&mut stack)?;
                let cls = pop(&mut stack)?;
                let class = if let Value::Global(g) = cls { g } else { "object".into() };
                stack.push(call(&class, Rc::new(args.items().unwrap_or_default()))?);
            }
            b'b' => {
                // BUILD sets an object's state; dicts take dict states as items
                let state = pop(&mut stack)?;
                if let (Value::Dict(d), Value::Dict(s)) = (top(&mut stack)?, &state) {
                    if !Rc::ptr_eq(d, s) {
                        let items: Vec<_> = s.borrow().clone();
                        d.borrow_mut().extend(items);
                    }
                }
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(persistent(pid)?);
            }
            b'P' => return Err("text persistent ids (protocol 0) are not supported".into()),
            b'q' => {
                let i = r.u8()? as usize;
                memo.insert(i, top(&mut stack)?.clone());
            }
            b'r' => {
                let i = r.u32()?;
                memo.insert(i, top(&mut stack)?.clone());
            }
            b'p' => {
                let i: usize = r.line()?.parse().map_err(|_| "bad PUT index")?;
                memo.insert(i, top(&mut stack)?.clone());
            }
            0x94 => {
                let i = memo.len();
                memo.insert(i, top(&mut stack)?.clone());
            }
            b'h' | b'j' | b'g' => {
                let i = match op {
                    b'h' => r.u8()? as usize,
                    b'j' => r.u32()?,
                    _ => r.line()?.parse().map_err(|_| "bad GET index")?,
                };
                stack.push(memo.get(&i).cloned().ok_or_else(|| format!("pickle memo {i} missing"))?);
            }
            b'0' => {
                pop(&mut stack)?;
            }
            b'1' => {
                pop_mark(&mut stack)?;
            }
            b'2' => {
                let v = top(&mut stack)?.clone();
                stack.push(v);
            }
            _ => return Err(format!("pickle opcode 0x{op:02x} at byte {at} is not supported")),
        }
    }
}
