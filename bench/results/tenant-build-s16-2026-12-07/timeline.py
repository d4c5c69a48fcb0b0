import re,collections,sys
txt=open(sys.argv[1]).read().split('\n\n')
samples=[]
for s in txt:
    lines=[l for l in s.strip().split('\n') if l.strip()]
    if not lines: continue
    m=re.match(r'\s*(\d+)\s+([\d.]+):',lines[0])
    if not m: continue
    tid=int(m.group(1)); t=float(m.group(2))
    syms=[l.strip().split(' ',1)[1] if ' ' in l.strip() else '' for l in lines[1:]]
    samples.append((tid,t,syms))
main=min(s[0] for s in samples)
bstart=min(t for tid,t,syms in samples if any('Snapshot::build' in x for x in syms))
bend=max(t for tid,t,syms in samples if tid==main and any('Snapshot::build' in x for x in syms))
print('build window',bend-bstart)
W=float(sys.argv[2]) if len(sys.argv)>2 else 0.1
keys=['compact::user','content_hash','sha2','blake3','NameTable::new','RecordsDraft>::entries','RecordsDraft>::list','adopt','BuildForm::fields','owners_in_slot_order','assign_tenants','tenants_by_number','Hierarchy','RecordStore::touch','RecordStore::find','RecordStore::insert','RecordStore::build_with','from_vec','Snapshot::compile','Snapshot::build_with','drop_in_place']
def label(syms):
    for x in syms:
        for key in keys:
            if key in x: return key
    return syms[0][:40] if syms else '?'
buckets=collections.defaultdict(lambda:[0,0,collections.Counter(),collections.Counter()])
for tid,t,syms in samples:
    if t<bstart or t>bend: continue
    k=int((t-bstart)/W)
    if tid==main:
        buckets[k][0]+=1; buckets[k][2][label(syms)]+=1
    else:
        buckets[k][1]+=1; buckets[k][3][label(syms)]+=1
for k in sorted(buckets):
    m,o,c,c2=buckets[k]
    print(f"{k*W:4.1f}s main {m:3d} other {o:3d}  {c.most_common(2)} | {c2.most_common(2)}")
