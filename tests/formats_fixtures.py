"""Small files in each real public layout, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

TAOBAO_ROWS = [
    "1,2268318,2520377,pv,1511544070",
    "1,2333346,2520771,pv,1511561733",
    "1,2576651,149192,fav,1511572885",
    "2,3830808,4181361,cart,1511593493",
    "2,4365585,2520377,buy,1511596146",
]

TMALL_ROWS = [
    "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type",
    "328862,323294,833,2882,2661,0829,0",
    "328862,844400,1271,2882,2661,829,1",
    "328862,575153,1271,2882,,1111,2",
    "234512,1032,662,4605,5341,0901,3",
]

REES46_ROWS = [
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session",
    "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde-8bb3-4e00-8c23-a032dfed738c",
    "2019-10-01 00:00:01 UTC,view,1307067,2053013558920217191,computers.notebook,lenovo,251.74,550050854,7c90fc70-0e80-4590-96f3-13c02c18c713",
    "2019-10-01 00:00:04 UTC,cart,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d",
    "2019-10-01 00:00:05 UTC,remove_from_cart,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d",
    "2019-10-01 00:00:07 UTC,purchase,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d",
]

RETAILROCKET_EVENTS = [
    "timestamp,visitorid,event,itemid,transactionid",
    "1433221332117,257597,view,355908,",
    "1433224214164,992329,view,248676,",
    "1433221999827,111016,addtocart,355908,",
    "1433222276276,483717,transaction,355908,3002",
    "1433222000000,5,view,999999,",
]

RETAILROCKET_PROPERTIES = [
    "timestamp,itemid,property,value",
    "1433041200000,355908,categoryid,1016",
    "1433222000000,355908,categoryid,1200",
    "1431226800000,248676,categoryid,491",
    "1431226800000,248676,available,1",
]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path
