import sys,subprocess,re
def load(f, incl):
    out=subprocess.run(["callgrind_annotate","--threshold=100","--inclusive="+("yes" if incl else "no"),f],capture_output=True,text=True).stdout
    d={}
    for line in out.splitlines():
        m=re.match(r'\s*([\d,]+)\s+\([^)]*\)\s+(.*)$',line)
        if m and 'PROGRAM TOTALS' not in line:
            name=re.sub(r'\s*\[[^\]]*\]$','',m.group(2)).replace('???:','')
            d[name]=d.get(name,0)+int(m.group(1).replace(',',''))
    return d
a,b,n=sys.argv[1],sys.argv[2],int(sys.argv[3]); incl=len(sys.argv)>4 and sys.argv[4]=='incl'
da,db=load(a,incl),load(b,incl)
rows=sorted(((db.get(k,0)-da.get(k,0))/n,k) for k in set(da)|set(db))
rows.reverse()
tot=sum(r[0] for r in rows if r[0]>0) if not incl else 0
for v,k in rows[:int(sys.argv[5]) if len(sys.argv)>5 else 60]:
    print(f"{v:9.0f}  {k[:150]}")
